"""The dependency files: the declared ranges (requirements*.txt, pyproject.toml), the lock that pins
the tested environment (requirements-lock.txt), the OpenMMLab versions of tools/install_openmmlab.sh,
and the test command that README.md documents and .ci/run runs."""
import os
import re
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from helpers import ROOT

# installed by the repository itself, never from the index: the project (pip install -e .) and mmcv
# (built from its sdist by tools/install_openmmlab.sh; no wheel on the index fits today's torch)
NOT_LOCKED = {'hornet', 'mmcv'}
# a requirement met by another distribution of the same module: tools/install_openmmlab.sh installs
# mmengine without its dependencies and OpenCV headless (cv2 without libGL) in place of opencv-python
SUBSTITUTES = {'opencv-python': 'opencv-python-headless'}


def _read(name: str) -> str:
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def declared(name: str) -> dict[str, Requirement]:
    """The requirements of a pip requirements file, following ``-r`` includes, by canonical name."""
    reqs = {}
    for line in _read(name).splitlines():
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        if line.startswith('-r '):
            reqs.update(declared(line[3:].strip()))
            continue
        req = Requirement(line)
        reqs[canonicalize_name(req.name)] = req
    return reqs


def locked() -> dict[str, Version]:
    """requirements-lock.txt: canonical name -> pinned version (every line ``name==version``)."""
    pins = {}
    for line in _read('requirements-lock.txt').splitlines():
        if not line.strip() or line.startswith('#'):
            continue
        m = re.fullmatch(r'([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)', line.strip())
        assert m, f'requirements-lock.txt: not a plain pin: {line!r}'
        name = canonicalize_name(m[1])
        assert name not in pins, f'requirements-lock.txt pins {name} twice'
        pins[name] = Version(m[2])
    return pins


def test_lock_pins_every_declared_requirement_inside_its_range():
    """Every name of requirements-test.txt (and requirements.txt, which it includes) is pinned in the
    lock, at a version its declared range admits; the project and mmcv are not in the lock."""
    pins = locked()
    reqs = declared('requirements-test.txt')
    assert {'torch', 'torchvision', 'timm', 'pytest', 'hypothesis'} <= set(reqs)
    missing = sorted(set(reqs) - set(pins))
    assert not missing, f'declared but not locked (run tools/update_lock.sh): {missing}'
    outside = {n: (str(pins[n]), str(r.specifier)) for n, r in reqs.items()
               if not r.specifier.contains(pins[n], prereleases=True)}
    assert not outside, f'locked versions outside the declared ranges: {outside}'
    assert not NOT_LOCKED & set(pins)


def test_lock_agrees_with_pyproject_and_the_openmmlab_installer():
    """The package's own dependency floors (pyproject.toml) admit the locked versions, and the
    OpenMMLab releases that tools/install_openmmlab.sh installs are the locked ones."""
    import tomllib
    pins = locked()
    project = tomllib.loads(_read('pyproject.toml'))['project']
    reqs = [Requirement(r) for r in project['dependencies']]
    reqs += [Requirement(r) for extra in project['optional-dependencies'].values() for r in extra]
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f'pyproject.toml names {name}, which the lock does not pin'
        assert req.specifier.contains(pins[name], prereleases=True), (name, str(req.specifier), str(pins[name]))
    script = _read('tools/install_openmmlab.sh')
    versions = dict(re.findall(r'^MM(\w+)_VER=(\S+)$', script, re.M))
    assert set(versions) == {'ENGINE', 'CV', 'DET', 'SEG', 'PRETRAIN'}
    for key, dist in (('ENGINE', 'mmengine'), ('DET', 'mmdet'), ('SEG', 'mmsegmentation'),
                      ('PRETRAIN', 'mmpretrain')):
        assert pins[dist] == Version(versions[key]), (dist, str(pins[dist]), versions[key])


def test_the_environment_is_the_locked_one_and_the_lock_is_closed():
    """The tests run in the environment the lock describes (command 2 installs it with --no-deps), and
    that install is complete: every requirement of a locked distribution (markers evaluated here) is
    itself locked, at a version it admits. A new dependency of an upgraded package would otherwise be
    missing, or an upgrade by hand would go untested."""
    pins = locked()
    env = default_environment()
    wrong, open_ends = {}, set()
    for name, version in pins.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            wrong[name] = (str(version), 'not installed')
            continue
        if Version(dist.version) != version:
            wrong[name] = (str(version), dist.version)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({**env, 'extra': ''}):
                continue
            dep = canonicalize_name(req.name)
            dep = SUBSTITUTES.get(dep, dep)
            if dep in NOT_LOCKED:
                continue
            if dep not in pins or not req.specifier.contains(pins[dep], prereleases=True):
                open_ends.add(f'{name} needs {req} (locked: {pins.get(dep)})')
    assert not wrong, ('installed versions differ from requirements-lock.txt (install it with '
                       f'`pip install --no-deps -r requirements-lock.txt`): {wrong}')
    assert not open_ends, sorted(open_ends)


def test_ci_runs_the_readme_test_command():
    """.ci/run runs command 2 of the README's Quick start, word for word, inside a fresh venv."""
    readme = _read('README.md')
    block = readme[readme.index('# 2. install the pinned test environment'):]
    block = block[:block.index('```')]
    command = [ln for ln in block.splitlines() if not ln.lstrip().startswith('#') and ln.strip()]
    assert command and 'requirements-lock.txt' in command[0]
    assert command[-1].endswith('python -m pytest -q -n 2 --dist loadfile tests')
    ci = _read('.ci/run')
    assert '\n'.join(command) in ci
    assert ci.index('-m venv') < ci.index(command[0])
