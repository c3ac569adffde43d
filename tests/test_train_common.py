"""Helpers shared by the training tests (tiny colour-coded ImageFolder data, tiny-model flags),
plus tests of the parser and data-set plumbing."""
import gzip
import os
import shlex
import subprocess
import sys
from typing import Dict, List, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import main as train_main
from utils import TrainingError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The evaluation and training commands of the original release's README, character for character
# (including its two shell slips: a backslash right after "--clip_grad 5", which glues the next
# line to it, and a backslash followed by a space at the end of the --resume line).
SEED_README_COMMANDS = (
    'python -m torch.distributed.launch --nproc_per_node=8 main.py \\\n'
    '--model hornet_tiny_7x7 --eval true --input_size 224 \\\n'
    '--resume /path/to/checkpoint \\ \n'
    '--data_path /path/to/imagenet-1k\n'
    '\n'
    'python -m torch.distributed.launch --nproc_per_node=8 main.py \\\n'
    '--model hornet_tiny_7x7 --drop_path 0.2 --clip_grad 5\\\n'
    '--batch_size 128 --lr 4e-3 --update_freq 4 \\\n'
    '--model_ema true --model_ema_eval true \\\n'
    '--data_path /path/to/imagenet-1k \\\n'
    '--output_dir ./logs/hornet_tiny_7x7\n'
)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on the shared 2-core CI machine, spinning OpenMP threads of
    several processes slow the tiny models down several-fold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_image_folder(root: str, classes: int = 3, train_per_class: int = 16, val_per_class: int = 8,
                      size: int = 16, seed: int = 0) -> str:
    """ImageNet-layout folder of noisy images whose class is the dominant colour channel
    (survives flips, crops and mild colour jitter). Returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in (('train', train_per_class), ('val', val_per_class)):
        for c in range(classes):
            folder = os.path.join(root, split, f'class_{c}')
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 90, size=(size, size, 3)).astype(np.uint8)
                img[..., c % 3] += np.uint8(150)
                Image.fromarray(img).save(os.path.join(folder, f'{i:03d}.png'))
    return root


def tiny_argv(data: str, out: str, **overrides) -> List[str]:
    """Flags for a tiny, fast, deterministic CPU run on :func:`make_image_folder` data."""
    flags: Dict[str, object] = dict(
        model='hornet_tiny_gf', depths='1 1 1 1', base_dim=16, input_size=32, nb_classes=3,
        data_path=data, output_dir=out, device='cpu', batch_size=8, epochs=2, warmup_epochs=0,
        lr=2e-3, num_workers=0, mixup=0, cutmix=0, smoothing=0, aa='none', reprob=0, color_jitter=0,
        print_freq=100, save_ckpt_num=5)
    flags.update(overrides)
    argv = []
    for k, v in flags.items():
        if v is None or v == '':
            continue
        argv.append(f'--{k}')
        argv.extend(str(v).split())
    return argv


def run_cli(argv: Sequence[str], launcher: Sequence[str] = (), timeout: int = 240) -> subprocess.CompletedProcess:
    """Run ``main.py`` as a separate process (optionally under a launcher), from the repo root."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'SLURM_PROCID'):
        env.pop(k, None)
    cmd = [sys.executable, *launcher, os.path.join(ROOT, 'main.py'), *argv]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- parser

def _commands_from(text: str) -> List[List[str]]:
    """``main.py`` argument lists of the shell commands in ``text`` (bash line joining)."""
    joined = text.replace('\\\n', '')  # what the shell does with backslash-newline
    cmds = []
    for line in joined.splitlines():
        if 'main.py' not in line or line.lstrip().startswith('#'):
            continue
        words = shlex.split(line)
        cmds.append(words[words.index('main.py') + 1:])
    return cmds


def test_seed_readme_commands_parse_and_build(tmp_path):
    """Both README commands, exactly as a shell would split them (including the glued
    ``5--batch_size`` and the stray ``' '`` word), parse and build their model and optimizer."""
    cmds = _commands_from(SEED_README_COMMANDS)
    assert len(cmds) == 2
    assert '5--batch_size' in cmds[1] and ' ' in cmds[0]  # the shell slips are really there
    parsed = [train_main.parse_args(c + ['--device', 'cpu']) for c in cmds]
    ev, tr = parsed
    assert ev.eval is True and ev.resume == '/path/to/checkpoint' and ev.model == 'hornet_tiny_7x7'
    assert (tr.clip_grad, tr.batch_size, tr.lr, tr.update_freq) == (5.0, 128, 4e-3, 4)
    assert tr.model_ema and tr.model_ema_eval and tr.drop_path == 0.2
    assert tr.output_dir == './logs/hornet_tiny_7x7' and tr.data_path == '/path/to/imagenet-1k'
    with torch.device('meta'):
        model = train_main.build_model(tr)
    assert sum(p.numel() for p in model.parameters()) == 22_409_512
    opt = train_main.create_optimizer(tr, model)
    assert len(opt.param_groups) == 28  # 14 layer groups x (decay, no decay)


TRAINING_COMMANDS = {
    # model: extra flags of TRAINING.md (paths substituted)
    'T7': '--model hornet_tiny_7x7 --drop_path 0.2 --clip_grad 100 --batch_size 128 --lr 4e-3 '
          '--update_freq 1 --model_ema true --model_ema_eval true',
    'TGF': '--model hornet_tiny_gf --drop_path 0.2 --clip_grad 1 --batch_size 128 --lr 4e-3 '
           '--update_freq 1 --model_ema true --model_ema_eval true',
    'S7': '--model hornet_small_7x7 --drop_path 0.4 --clip_grad 5 --batch_size 64 --lr 4e-3 '
          '--update_freq 2 --model_ema true --model_ema_eval true',
    'SGF': '--model hornet_small_gf --drop_path 0.4 --clip_grad 1 --batch_size 64 --lr 4e-3 '
           '--update_freq 2 --model_ema true --model_ema_eval true --aa rand-m12-mstd0.5-inc1',
    'B7': '--model hornet_base_7x7 --drop_path 0.5 --clip_grad 5 --batch_size 64 --lr 4e-3 '
          '--update_freq 2 --model_ema true --model_ema_eval true',
    'BGF': '--model hornet_base_gf --drop_path 0.5 --clip_grad 1 --batch_size 64 --lr 4e-3 '
           '--update_freq 2 --model_ema true --model_ema_eval true --aa rand-m15-mstd0.5-inc1',
    'L7_22k': '--model hornet_large_7x7 --drop_path 0.2 --clip_grad 5 --weight_decay 0.1 --batch_size 32 '
              '--lr 4e-3 --update_freq 2 --warmup_epochs 5 --epochs 90 --data_set image_folder '
              '--nb_classes 21841 --disable_eval true',
    'LGF_22k': '--model hornet_large_gf --drop_path 0.2 --clip_grad 1 --weight_decay 0.1 --batch_size 32 '
               '--lr 4e-3 --update_freq 2 --warmup_epochs 5 --epochs 90 --data_set image_folder '
               '--nb_classes 21841 --disable_eval true',
    'L7_384': '--model hornet_large_7x7 --drop_path 0.4 --clip_grad 1 --batch_size 16 --lr 5e-5 '
              '--update_freq 2 --weight_decay 1e-8 --warmup_epochs 0 --input_size 384 --epochs 30 '
              '--model_ema true --model_ema_eval true --cutmix 0 --mixup 0 --layer_decay 0.7 '
              '--finetune in22k.pth',
    'LGF_384': '--model hornet_large_gf_img384 --drop_path 0.4 --clip_grad 1 --batch_size 16 --lr 5e-5 '
               '--update_freq 2 --weight_decay 1e-8 --warmup_epochs 0 --input_size 384 --epochs 30 '
               '--model_ema true --model_ema_eval true --cutmix 0 --mixup 0 --layer_decay 0.7 '
               '--finetune in22k.pth',
}


@pytest.mark.parametrize('name', sorted(TRAINING_COMMANDS))
def test_training_commands_parse_and_build(name, tmp_path):
    """Every TRAINING.md recipe parses; its model (on the meta device), optimizer groups, loss,
    mixup and transforms build with the recipe's numbers."""
    argv = shlex.split(TRAINING_COMMANDS[name]) + [
        '--data_path', str(tmp_path), '--output_dir', str(tmp_path / 'out'), '--device', 'cpu']
    args = train_main.parse_args(argv)
    with torch.device('meta'):
        model = train_main.build_model(args)
    assert model.num_classes == args.nb_classes
    opt = train_main.create_optimizer(args, model)
    scales = {g['layer_id']: g['lr_scale'] for g in opt.param_groups}
    assert scales[0] == pytest.approx(args.layer_decay ** 13) and scales[13] == 1.0
    mixup_fn, criterion = train_main.build_training_parts(args, args.nb_classes)
    assert (mixup_fn is None) == (args.mixup == 0 and args.cutmix == 0)
    t = datasets.build_transform(True, args)
    assert type(t.transforms[0]).__name__.startswith('RandomResizedCrop')
    if '384' in name:
        ev = datasets.build_transform(False, args)
        assert ev.transforms[1].size in (384, (384, 384))


def test_local_rank_spellings():
    assert train_main.parse_args(['--local-rank', '3']).local_rank == 3
    assert train_main.parse_args(['--local_rank=2']).local_rank == 2
    args = train_main.parse_args(['--model_ema', 'true', '--eval', 'False', '--use_amp', '1'])
    assert (args.model_ema, args.eval, args.use_amp) == (True, False, True)
    assert train_main.parse_args([]).batch_size == 64


# ----------------------------------------------------------------------------- data sets

def _write_idx(path: str, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in arr.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_dataset(tmp_path):
    """MNIST-format idx files (gzip) load as RGB images with their labels."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, size=(7, 28, 28)).astype(np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 9])
    for prefix in ('train', 't10k'):
        _write_idx(str(tmp_path / f'{prefix}-images-idx3-ubyte.gz'), imgs)
        _write_idx(str(tmp_path / f'{prefix}-labels-idx1-ubyte.gz'), labels)
    ds = datasets.IdxDataset(str(tmp_path), train=True)
    img, y = ds[6]
    assert len(ds) == 7 and y == 9 and img.size == (28, 28) and img.mode == 'RGB'
    assert np.array_equal(np.asarray(img)[..., 0], imgs[6])
    os.remove(tmp_path / 't10k-labels-idx1-ubyte.gz')
    with pytest.raises(TrainingError, match='t10k-labels-idx1-ubyte'):
        datasets.IdxDataset(str(tmp_path), train=False)


def test_demo_export_from_csv(tmp_path):
    """The demo exporter turns a CSV of 784 pixels + label into train/val PNG folders, once."""
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 256, size=(10, 784)), np.arange(10)[:, None] % 3], 1)
    src = tmp_path / 'digits.csv.gz'
    with gzip.open(src, 'wt') as f:
        np.savetxt(f, rows, fmt='%d', delimiter=',')
    root = str(tmp_path / 'cache')
    datasets.export_demo(root, str(src))
    n_val = sum(len(files) for _, _, files in os.walk(os.path.join(root, 'val')))
    n_train = sum(len(files) for _, _, files in os.walk(os.path.join(root, 'train')))
    assert (n_train, n_val) == (8, 2)
    first = np.asarray(Image.open(os.path.join(root, 'val', '0', '00000.png')))
    assert np.array_equal(first, rows[0, :784].reshape(28, 28))
    mtime = os.path.getmtime(os.path.join(root, 'demo_complete.json'))
    datasets.export_demo(root, str(src))  # cached: untouched
    assert os.path.getmtime(os.path.join(root, 'demo_complete.json')) == mtime
