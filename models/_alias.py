"""One module under two names: ``hornet`` (the installed package) and ``models`` (the repository layout).

``pip install -e .`` maps the package ``hornet`` onto the repository's ``models/`` directory, and the
research scripts run from the repository root ``import models``. Without care, a process that
imports both names would execute ``models/hornet.py`` twice: timm would see every ``hornet_*``
variant registered twice, and ``hornet.GnConv`` would be a different class from ``models.GnConv``.

:func:`alias_other_name` (called once by the package's ``__init__``) puts a finder in front of
``sys.meta_path`` that answers an import of the other name, or of any of its submodules, with the
module already loaded under the first name. It only does so when the other name would load these
very files: a different ``models`` package (your own project's, say) or a ``hornet`` installed from
another checkout is imported normally.
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

NAMES = ('hornet', 'models')


class _AliasLoader(importlib.abc.Loader):
    """Loads ``alias`` as the already imported (or now imported) module ``target``."""

    def __init__(self, target: str):
        self.target = target
        self.target_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.target_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system set __spec__ to the alias's spec; the module keeps its own identity
        module.__spec__ = self.target_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Resolves ``other[.sub]`` to ``package[.sub]`` when ``other`` is this same directory."""

    def __init__(self, package: ModuleType, other: str):
        self.package = package
        self.other = other
        self.directory = os.path.realpath(package.__path__[0])

    def _same_files(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None) -> bool:
        """Would the remaining finders load ``fullname`` (a top-level package) from our directory?"""
        for finder in sys.meta_path:
            if isinstance(finder, _AliasFinder) or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                locations = spec.submodule_search_locations or ()
                return any(os.path.realpath(p) == self.directory for p in locations)
        return False

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        top, _, rest = fullname.partition('.')
        if top != self.other:
            return None
        if rest:  # a submodule: only when the other name already is this package
            if sys.modules.get(self.other) is not self.package:
                return None
        elif not self._same_files(fullname, path, target):
            return None
        real = self.package.__name__ + ('.' + rest if rest else '')
        return importlib.util.spec_from_loader(fullname, _AliasLoader(real))


def alias_other_name(name: str) -> None:
    """Make the other of ``hornet``/``models`` an alias of the loaded package ``name`` (idempotent)."""
    if name not in NAMES:  # vendored under another name: nothing to alias
        return
    package = sys.modules[name]
    other = NAMES[1 - NAMES.index(name)]
    if any(isinstance(f, _AliasFinder) and f.package is package for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _AliasFinder(package, other))
