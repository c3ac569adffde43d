"""semantic_segmentation/train.py and test.py end to end on a tiny generated ADE20K (CPU)."""
import glob
import json
import os
import textwrap

import mmseg  # noqa: F401  (a missing OpenMMLab stack must fail, not skip)
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROOT, run_python, subprocess_env

SEG_DIR = os.path.join(ROOT, 'semantic_segmentation')
CONFIG_DIR = os.path.join(SEG_DIR, 'configs', 'hornet')
ITERS = 12
# class id (ADE20K label value, 0 = "other", ignored) -> colour
COLOURS = {0: (128, 128, 128), 1: (220, 40, 40), 2: (40, 200, 40), 3: (40, 40, 220)}


def _write_sample(root: str, split: str, name: str, label: np.ndarray, rng: np.random.Generator) -> None:
    img = np.zeros(label.shape + (3,), np.float32)
    for cls, colour in COLOURS.items():
        img[label == cls] = colour
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(root, 'images', split, f'{name}.jpg'), quality=95)
    Image.fromarray(label).save(os.path.join(root, 'annotations', split, f'{name}.png'))


def make_tiny_ade20k(root: str) -> None:
    """ADE20K layout: images/{training,validation}/*.jpg, annotations/.../*.png (0 = ignore)."""
    rng = np.random.default_rng(0)
    for split in ('training', 'validation'):
        os.makedirs(os.path.join(root, 'images', split))
        os.makedirs(os.path.join(root, 'annotations', split))
    for i in range(4):  # 64x64 training images: vertical class bands, an ignored border
        label = np.zeros((64, 64), np.uint8)
        cuts = np.sort(rng.choice(np.arange(12, 52), 2, replace=False))
        for cls, (a, b) in zip(rng.permutation([1, 2, 3]), zip([0, *cuts], [*cuts, 64], strict=True), strict=True):
            label[:, a:b] = cls
        label[:3] = 0
        _write_sample(root, 'training', f'ADE_train_{i:08d}', label, rng)
    for i in range(2):  # 80x112 validation images: need several 64 px slide windows
        label = np.zeros((80, 112), np.uint8)
        label[:, :40], label[:, 40:80], label[:, 80:] = rng.permutation([1, 2, 3])
        label[:40, 90:] = 0
        _write_sample(root, 'validation', f'ADE_val_{i:08d}', label, rng)


def tiny_config(path: str, base: str, data_root: str, **head) -> str:
    """A config inheriting ``base`` with a small HorNet (one block per stage, width 16) and tiny data."""
    text = f'''
    _base_ = [{os.path.join(CONFIG_DIR, base)!r}]
    data_root = {data_root!r}
    crop_size = (64, 64)
    model = dict(
        data_preprocessor=dict(size=crop_size),
        backbone=dict(depths=(1, 1, 1, 1), base_dim=16, drop_path_rate=0.0, init_cfg=None),
        decode_head=dict(in_channels=[16, 32, 64, 128], channels=32, dropout_ratio=0.0, **{head!r}),
        auxiliary_head=dict(in_channels=64, channels=16, dropout_ratio=0.0),
        test_cfg=dict(mode='slide', crop_size=crop_size, stride=(43, 43)))
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
        dict(type='PackSegInputs'),
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='PackSegInputs'),
    ]
    tta_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='TestTimeAug', transforms=[
            [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in (0.75, 1.0, 1.25)],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')]]),
    ]
    train_dataloader = dict(
        batch_size=2, num_workers=0, persistent_workers=False,
        sampler=dict(type='InfiniteSampler', shuffle=False),
        dataset=dict(data_root=data_root, pipeline=train_pipeline))
    val_dataloader = dict(
        batch_size=1, num_workers=0, persistent_workers=False,
        dataset=dict(data_root=data_root, pipeline=test_pipeline))
    test_dataloader = val_dataloader
    optim_wrapper = dict(optimizer=dict(lr=1e-2))
    param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
        dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=2, end={ITERS}),
    ]
    train_cfg = dict(max_iters={ITERS}, val_interval=1000)
    default_hooks = dict(
        logger=dict(interval=1),
        checkpoint=dict(interval={ITERS}),
        visualization=dict(draw=False))
    env_cfg = dict(cudnn_benchmark=False)
    randomness = dict(seed=0)
    '''
    with open(path, 'w') as f:
        f.write(textwrap.dedent(text))
    return path


def run_script(script: str, *args: str) -> str:
    env = subprocess_env(OMP_NUM_THREADS='2', PYTHONHASHSEED='0')
    proc = run_python([os.path.join(SEG_DIR, script), *args], env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def train_losses(work_dir: str) -> list:
    (scalars,) = glob.glob(os.path.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(scalars) as f:
        rows = [json.loads(line) for line in f]
    rows = [r for r in rows if 'loss' in r]
    assert [r['iter'] for r in rows] == list(range(1, ITERS + 1))
    return [r['loss'] for r in rows], [r['decode.acc_seg'] for r in rows]


def check_training(work_dir: str) -> list:
    losses, acc = train_losses(work_dir)
    assert all(np.isfinite(losses))
    # the colour -> class rule is learnt within a few steps (150-way CE falls from ~6.7 = 1.4 ln 150)
    assert losses[0] == pytest.approx(1.4 * np.log(150), rel=0.05)
    assert losses[-1] < losses[0] and np.mean(losses[-3:]) < 0.92 * np.mean(losses[:3]), losses
    assert np.mean(acc[-3:]) > 80.0, acc  # decode head pixel accuracy on the training crops
    ckpt = torch.load(os.path.join(work_dir, f'iter_{ITERS}.pth'), map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == ITERS
    assert ckpt['state_dict']['backbone.norm3.weight'].shape == (128,)
    assert 'auxiliary_head.conv_seg.weight' in ckpt['state_dict']
    return losses


def miou_from_pngs(pred_dir: str, data_root: str) -> float:
    """mIoU over the 150 ADE20K classes from saved predictions (label ids 1..150, 0 ignored)."""
    inter, union = np.zeros(151), np.zeros(151)
    gts = sorted(glob.glob(os.path.join(data_root, 'annotations', 'validation', '*.png')))
    for gt_path in gts:
        gt = np.array(Image.open(gt_path))
        pred = np.array(Image.open(os.path.join(pred_dir, os.path.basename(gt_path))))
        assert pred.shape == gt.shape
        valid = gt > 0
        g, p = gt[valid], pred[valid]
        inter += np.bincount(g[g == p], minlength=151)
        union += np.bincount(g, minlength=151) + np.bincount(p, minlength=151) - np.bincount(g[g == p], minlength=151)
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = inter[1:] / union[1:]
    return float(np.round(np.nanmean(iou) * 100, 2))


@pytest.fixture(scope='module')
def tiny_ade(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('ade'))
    make_tiny_ade20k(root)
    return root


@pytest.mark.slow
def test_upernet_train_then_test(tiny_ade, tmp_path, monkeypatch):
    cfg = tiny_config(str(tmp_path / 'upernet_tiny.py'), 'upernet_hornet_tiny_gf_512_160k_ade20k.py', tiny_ade)
    work_dir = str(tmp_path / 'work')
    run_script('train.py', cfg, '--work-dir', work_dir, '--seed', '0')
    check_training(work_dir)
    ckpt = os.path.join(work_dir, f'iter_{ITERS}.pth')

    # test.py in this process (saves a second start-up of torch + mmseg); it loads weights-only
    from semantic_segmentation import test as seg_test

    # single-scale slide test; predictions saved as ADE20K label maps
    pred_dir = str(tmp_path / 'pred')
    metrics = seg_test.main([cfg, ckpt, '--work-dir', str(tmp_path / 'eval'), '--out', pred_dir, '--eval', 'mIoU'])
    assert set(metrics) == {'aAcc', 'mIoU', 'mAcc'}
    assert sorted(os.listdir(pred_dir)) == ['ADE_val_00000000.png', 'ADE_val_00000001.png']
    assert metrics['mIoU'] == pytest.approx(miou_from_pngs(pred_dir, tiny_ade), abs=0.011)
    assert metrics['aAcc'] > 80.0  # three colour-coded classes, learnt in 12 steps

    # multi-scale + flip
    metrics_ms = seg_test.main([cfg, ckpt, '--work-dir', str(tmp_path / 'eval_ms'), '--aug-test'])
    assert set(metrics_ms) == {'aAcc', 'mIoU', 'mAcc'}
    assert metrics_ms['aAcc'] > 80.0 and metrics_ms['mIoU'] > 50.0


@pytest.mark.slow
def test_horfpn_train(tiny_ade, tmp_path):
    cfg = tiny_config(str(tmp_path / 'horfpn_tiny.py'), 'upernet_horfpn_gf_hornet_small_7x7_512_160k_ade20k.py',
                      tiny_ade)
    work_dir = str(tmp_path / 'work')
    run_script('train.py', cfg, '--work-dir', work_dir, '--seed', '0', '--no-validate')
    check_training(work_dir)
    ckpt = torch.load(os.path.join(work_dir, f'iter_{ITERS}.pth'), map_location='cpu', weights_only=False)
    sd = ckpt['state_dict']
    # the fusion layer is a gnConv with a GF mixer (4 x 32 -> 32; 16 + 32 mixed channels, half global),
    # the FPN output convs stay 3x3 convs
    assert sd['decode_head.fpn_bottleneck.gnconv.proj_in.weight'].shape == (64, 128, 1, 1)
    assert sd['decode_head.fpn_bottleneck.gnconv.dwconv.complex_weight'].shape == (24, 32, 17, 2)
    assert sd['decode_head.fpn_bottleneck.norm.weight'].shape == (32,)
    assert sd['decode_head.fpn_convs.2.conv.weight'].shape == (32, 32, 3, 3)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resume_continues(tiny_ade, tmp_path):
    """SIGTERM in the middle of training: the iteration ends, iter_<N>.pth and last_checkpoint are
    written, the exit code is 143; `train.py CONFIG --resume` (auto) continues at iteration N + 1."""
    import signal
    import subprocess
    import sys
    cfg = tiny_config(str(tmp_path / 'upernet_tiny.py'), 'upernet_hornet_tiny_gf_512_160k_ade20k.py', tiny_ade)
    work_dir = str(tmp_path / 'work')
    argv = [sys.executable, os.path.join(SEG_DIR, 'train.py'), cfg, '--work-dir', work_dir, '--seed', '0',
            '--no-validate']
    proc = subprocess.Popen(argv, cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS='2', PYTHONHASHSEED='0'),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if f'Iter(train) [ 4/{ITERS}]' in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, rest[-3000:]
    saved = [n for n in os.listdir(work_dir) if n.startswith('iter_')]
    assert len(saved) == 1 and 4 <= int(saved[0][5:-4]) < ITERS, saved  # at least the 4 logged iterations
    n = int(saved[0][5:-4])
    with open(os.path.join(work_dir, 'last_checkpoint')) as f:
        assert f.read().strip() == os.path.join(work_dir, saved[0])
    assert f'terminated (SIGTERM): saved {saved[0]} at iteration {n}' in rest

    out = run_script('train.py', cfg, '--work-dir', work_dir, '--seed', '0', '--no-validate', '--resume')
    assert [ln for ln in out.splitlines() if 'resumed' in ln.lower()], out[-3000:]
    assert f'Iter(train) [{n + 1:>2}/{ITERS}]' in out and f'Iter(train) [{n:>2}/{ITERS}]' not in out, out[-3000:]
    ckpt = torch.load(os.path.join(work_dir, f'iter_{ITERS}.pth'), map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == ITERS
