"""The installable model library (`pip install -e .` / `pip install .`, package `hornet`) and the
research layout's imports (`import models` from the root, the scripts run as files from anywhere).

The README's set-up runs `pip install -e .` in this checkout; these tests check that installed state.
"""
import json
import os
import shutil
import sys
import textwrap

import pytest

import run_with_submitit as rws
from helpers import ROOT, run_python, subprocess_env

MODELS_DIR = os.path.join(ROOT, 'models')
HORNET_TINY_GF_PARAMS = 22_991_848  # the released layout's parameter count (1000 classes)
# what `import hornet` loads: the package and its modules, without mm_hornet (OpenMMLab, on demand)
LIBRARY_MODULES = ['hornet', 'hornet._alias', 'hornet.hornet', 'hornet.hub', 'hornet.layer_decay', 'hornet.ops',
                   'hornet.state_dict']


def _env(**extra):
    """A child's environment without PYTHONPATH (so nothing but the install finds the code)."""
    return subprocess_env(pythonpath=None, **extra)


def _python(code, cwd, **env):
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned parsed."""
    r = run_python(['-c', textwrap.dedent(code)], cwd=cwd, env=_env(**env))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


USE_LIBRARY = """
    import json, sys
    import torch, timm
    import hornet
    from hornet import GnConv
    model = timm.create_model('hornet_tiny_gf').eval()
    with torch.no_grad():
        y = model(torch.zeros(2, 3, 64, 64))
    g = GnConv(64, order=3, mixer='gf', filter_size=(8, 5))(torch.zeros(1, 64, 8, 8))
    print(json.dumps(dict(
        file=hornet.__file__, name=hornet.__name__, params=sum(p.numel() for p in model.parameters()),
        logits=list(y.shape), gnconv=list(g.shape), variants=len(timm.list_models('hornet_*')),
        loaded=sorted(m for m in sys.modules if m.split('.')[0] in ('models', 'hornet', 'mmdet', 'mmengine')))))
"""


def test_hornet_is_models_in_this_process():
    """The test session imported `models` (conftest.py); `hornet` is then the same module, not a second copy."""
    import hornet
    import hornet.hornet
    import models
    assert hornet is models and hornet.hornet is models.hornet and hornet.GnConv is models.GnConv
    assert hornet.__file__ == os.path.join(MODELS_DIR, '__init__.py'), \
        'hornet is not installed from this checkout: run `pip install -e .` in the repository root'
    assert sys.modules['hornet.hornet'] is sys.modules['models.hornet']


@pytest.mark.slow  # a fresh interpreter per case (torch + timm imports)
def test_installed_hornet_imports_from_anywhere(tmp_path):
    """`pip install -e .` (README): `import hornet` outside the repository is this checkout's models/,
    without `models`, mm_hornet or any OpenMMLab module."""
    out = _python(USE_LIBRARY, cwd=str(tmp_path))
    assert out['file'] == os.path.join(MODELS_DIR, '__init__.py'), \
        'hornet is not installed from this checkout: run `pip install -e .` in the repository root'
    assert out['name'] == 'hornet'
    assert out['params'] == HORNET_TINY_GF_PARAMS
    assert out['logits'] == [2, 1000] and out['gnconv'] == [1, 64, 8, 8]
    assert out['variants'] == 10
    assert out['loaded'] == LIBRARY_MODULES


@pytest.mark.slow  # a fresh interpreter per case (torch + timm imports)
@pytest.mark.parametrize('first,second', [('hornet', 'models'), ('models', 'hornet')])
def test_hornet_and_models_are_one_module(first, second):
    """From the repository root both names import; models/hornet.py runs once, timm registers each variant
    once (no 'Overwriting ... in registry' warning), and the classes are the same objects."""
    out = _python(f"""
        import json, sys, warnings
        import torch, timm
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            import {first}
            import {second}
            import hornet, models, hornet.hornet, models.hornet
        files = {{m.__file__ for m in sys.modules.values()
                  if (getattr(m, '__file__', None) or '').endswith('hornet.py')}}
        print(json.dumps(dict(
            warnings=[str(w.message) for w in caught], same=hornet is models,
            gnconv=hornet.GnConv is models.GnConv and hornet.hornet.HorNet is models.hornet.HorNet,
            submodule=sys.modules['hornet.hornet'] is sys.modules['models.hornet'],
            objects=len({{id(m) for k, m in sys.modules.items() if k.split('.')[0] in ('hornet', 'models')}}),
            keys=sorted(k for k in sys.modules if k.split('.')[0] in ('hornet', 'models')),
            name=models.__name__, spec=models.__spec__.name, files=sorted(files),
            entry=timm.models._registry._model_entrypoints['hornet_tiny_gf'].__module__)))
    """, cwd=ROOT)
    assert out['warnings'] == []
    assert out['same'] and out['gnconv'] and out['submodule']
    assert out['keys'] == sorted([first, *(first + m[len('hornet'):] for m in LIBRARY_MODULES[1:]), second,
                                  f'{second}.hornet'])
    assert out['objects'] == len(LIBRARY_MODULES)  # one module object per file
    assert out['name'] == out['spec'] == first  # the first import names the module, the other aliases it
    assert out['files'] == [os.path.join(MODELS_DIR, 'hornet.py')]
    assert out['entry'] == f'{first}.hornet'


@pytest.mark.slow
def test_submodule_first_imported_under_the_alias():
    """models.mm_hornet (not imported by the package) loads once whichever name reaches it first: its
    mmdet/mmseg registrations would raise on a second run."""
    out = _python("""
        import json, sys
        import hornet
        import models.mm_hornet
        import hornet.mm_hornet
        print(json.dumps(dict(same=hornet.mm_hornet is models.mm_hornet, name=models.mm_hornet.__name__,
                              spec=models.mm_hornet.__spec__.name)))
    """, cwd=ROOT)
    assert out == dict(same=True, name='hornet.mm_hornet', spec='hornet.mm_hornet')


@pytest.mark.slow  # a fresh interpreter per case (torch + timm imports)
def test_unrelated_models_package_is_not_aliased(tmp_path):
    """A project's own `models` package stays its own when `hornet` is imported first."""
    (tmp_path / 'models').mkdir()
    (tmp_path / 'models' / '__init__.py').write_text("OWNER = 'project'\n")
    (tmp_path / 'models' / 'hornet.py').write_text("OWNER = 'project'\n")
    out = _python("""
        import json
        import hornet
        import models, models.hornet
        print(json.dumps(dict(alias=models is hornet, owner=[models.OWNER, models.hornet.OWNER],
                              has_gnconv=hasattr(models, 'GnConv'))))
    """, cwd=str(tmp_path))
    assert out == dict(alias=False, owner=['project', 'project'], has_gnconv=False)


def _requires(metadata):
    """{requirement name (+ extra): set of specifier clauses} from a METADATA file's Requires-Dist lines."""
    out = {}
    for line in metadata.splitlines():
        if line.startswith('Requires-Dist:'):
            req, _, marker = line[len('Requires-Dist:'):].strip().partition(';')
            name = req.split('>')[0].split('<')[0].split('=')[0].split('[')[0].strip()
            extra = marker.split('==')[-1].strip().strip('"\'') if 'extra' in marker else ''
            out[f'{name}[{extra}]' if extra else name] = set(req[len(name):].replace(' ', '').split(',')) - {''}
    return out


@pytest.mark.slow
def test_non_editable_install_holds_only_the_model_library(tmp_path):
    """`pip install .` (what `pip install git+<repo>` does on a clean clone): the package `hornet` (the
    models/ files) and its metadata, nothing of the research layout; it works from the install alone."""
    src = tmp_path / 'src'
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        '.git', 'output', 'logs', '__pycache__', '*.egg-info', 'build', '.pytest_cache'))
    target = tmp_path / 'site'
    r = run_python(['-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation', '--target', str(target),
                    str(src)], env=_env())
    assert r.returncode == 0, r.stderr
    dist_info = 'hornet-0.1.0.dist-info'
    assert sorted(os.listdir(target)) == ['hornet', dist_info]
    assert sorted(f for f in os.listdir(target / 'hornet') if f.endswith('.py')) == \
        sorted(f for f in os.listdir(MODELS_DIR) if f.endswith('.py'))
    metadata = (target / dist_info / 'METADATA').read_text()
    assert 'Requires-Python: >=3.10' in metadata.splitlines()
    assert _requires(metadata) == {
        'torch': {'>=2.4'}, 'timm': {'>=1.0.29', '<2'},
        'webdataset[data]': {'>=1.0.2'}, 'datasets[data]': {'>=5.2'},
        'tensorboardX[train]': set(), 'submitit[train]': {'>=1.5', '<2'},
        'pytest[test]': {'>=8'}, 'hypothesis[test]': {'>=6.100'}, 'pytest-timeout[test]': {'>=2.3'},
        'ruff[test]': {'==0.17.6'},
    }
    out = _python(USE_LIBRARY, cwd=str(tmp_path), PYTHONPATH=str(target))
    assert out['file'] == str(target / 'hornet' / '__init__.py')
    assert out['params'] == HORNET_TINY_GF_PARAMS and out['logits'] == [2, 1000] and out['variants'] == 10
    assert out['loaded'] == LIBRARY_MODULES


SCRIPTS = ['object_detection/train.py', 'object_detection/test.py', 'object_detection/get_flops.py',
           'semantic_segmentation/train.py', 'semantic_segmentation/test.py', 'semantic_segmentation/get_flops.py',
           'benchmarks/throughput.py', 'calc_flops.py']


@pytest.mark.slow
@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_run_as_files_from_anywhere(script, tmp_path):
    """The documented `python <dir>/<script>.py ...` commands find the repository's modules (tools,
    calc_flops, models, hornet) whatever the working directory, with no PYTHONPATH."""
    r = run_python([os.path.join(ROOT, script), '--help'], cwd=str(tmp_path), env=_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('usage: ')


def test_submitted_jobs_find_the_repository(tmp_path, monkeypatch):
    """The SLURM/local tasks unpickle the Trainer and import main/utils by name, wherever they start: the
    submission puts the repository first on the job's PYTHONPATH and restores the caller's afterwards."""
    seen = []

    class Executor:
        def submit(self, fn):
            seen.append(os.environ.get('PYTHONPATH'))
            return 'job'

    monkeypatch.setattr(rws, 'build_executor', lambda args: Executor())
    monkeypatch.setenv('PYTHONPATH', '/elsewhere')
    args = rws.parse_args(['--cluster', 'local', '--job_dir', str(tmp_path / 'job'), '--data_path', str(tmp_path)])
    assert rws.submit(args) == 'job'
    monkeypatch.delenv('PYTHONPATH')
    assert rws.submit(args) == 'job'
    assert seen == [os.pathsep.join([ROOT, '/elsewhere']), ROOT]
    assert 'PYTHONPATH' not in os.environ
