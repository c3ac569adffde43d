"""main.py's parser (the documented commands, the original defaults) and data-set plumbing."""
import gzip
import os
import re
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import main as train_main
from helpers import ROOT, make_image_folder, read_log, tensorboard_events, tiny_argv
from utils import TrainingError

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


# ----------------------------------------------------------------------------- parser

def _commands_from(text: str) -> list[list[str]]:
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
              '--disable_eval true',
    'LGF_22k': '--model hornet_large_gf --drop_path 0.2 --clip_grad 1 --weight_decay 0.1 --batch_size 32 '
               '--lr 4e-3 --update_freq 2 --warmup_epochs 5 --epochs 90 --data_set image_folder '
               '--disable_eval true',
    'L7_384': '--model hornet_large_7x7 --drop_path 0.4 --clip_grad 1 --batch_size 16 --lr 5e-5 '
              '--update_freq 1 --weight_decay 1e-8 --warmup_epochs 0 --input_size 384 --epochs 30 '
              '--model_ema true --model_ema_eval true --cutmix 0 --mixup 0 --layer_decay 0.7 '
              '--finetune in22k.pth',
    'LGF_384': '--model hornet_large_gf_img384 --drop_path 0.4 --clip_grad 1 --batch_size 16 --lr 5e-5 '
               '--update_freq 1 --weight_decay 1e-8 --warmup_epochs 0 --input_size 384 --epochs 30 '
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
    # image_folder (22K) takes the class count from the folder at run time; the others have 1000
    assert args.nb_classes is None and model.num_classes == 1000
    opt = train_main.create_optimizer(args, model)
    scales = {g['layer_id']: g['lr_scale'] for g in opt.param_groups}
    assert scales[0] == pytest.approx(args.layer_decay ** 13) and scales[13] == 1.0
    mixup_fn, criterion = train_main.build_training_parts(args, model.num_classes)
    assert (mixup_fn is None) == (args.mixup == 0 and args.cutmix == 0)
    t = datasets.build_transform(True, args)
    assert type(t.transforms[0]).__name__.startswith('RandomResizedCrop')
    ev = datasets.build_transform(False, args)
    if '384' in name:  # straight to 384 x 384, no crop
        assert tuple(ev.transforms[0].size) == (384, 384) and type(ev.transforms[1]).__name__ == 'ToTensor'
    else:  # short side 256, centre crop 224
        assert ev.transforms[0].size == 256 and ev.transforms[1].size == (224, 224)


def _training_md_sections() -> dict[str, str]:
    """TRAINING.md's ``## `` sections: heading -> text."""
    with open(os.path.join(ROOT, 'TRAINING.md')) as f:
        parts = re.split(r'^## ', f.read(), flags=re.M)
    return {p.split('\n', 1)[0].strip(): p for p in parts[1:]}


def _md_commands(text: str) -> list[tuple]:
    """(script, words, argv) of every main.py / run_with_submitit.py command in the code blocks
    of ``text`` (bash line joining; placeholder commands with ``<flags>`` or ``...`` skipped)."""
    cmds = []
    for block in re.findall(r'^```\n(.*?)^```', text, re.S | re.M):
        for line in block.replace('\\\n', '').splitlines():
            words = shlex.split(line.split('#')[0]) if line.strip() else []
            for script in ('main.py', 'run_with_submitit.py'):
                if script in words and '<flags>' not in words and '...' not in words:
                    cmds.append((script, words, words[words.index(script) + 1:]))
    return cmds


def _parse_md_command(script: str, words: list[str], argv: list[str]):
    """(args, processes) of one documented command."""
    import run_with_submitit as rws
    if script == 'main.py':
        procs = next(int(w.split('=')[1]) for w in words if w.startswith('--nproc_per_node='))
        return train_main.parse_args(argv), procs
    args = rws.parse_args(argv)
    return args, args.nodes * args.ngpus


def test_training_md_commands_match_the_original_recipes():
    """Every command in TRAINING.md parses; the recipe sections' effective batches (batch x
    update_freq x processes) are the original's: 4096 for ImageNet-1K/22K training, 512 for the
    22K -> 1K fine-tune at 384, whose other numbers are the reference recipe's; the 1K table has
    the numbers of TRAINING_COMMANDS."""
    sections = _training_md_sections()
    for text in sections.values():
        for cmd in _md_commands(text):
            _parse_md_command(*cmd)
    recipes = {}
    for heading in ('ImageNet-1K from scratch (300 epochs, 4 nodes x 8 GPUs)',
                    'HorNet-L: ImageNet-22K pre-training (90 epochs, 8 nodes x 8 GPUs)',
                    'HorNet-L: ImageNet-22K -> 1K fine-tuning at 384 (30 epochs, 4 nodes x 8 GPUs)'):
        for cmd in _md_commands(sections[heading]):
            args, procs = _parse_md_command(*cmd)
            recipes[args.model] = (args, procs, args.batch_size * args.update_freq * procs)
    assert {k: v[2] for k, v in recipes.items()} == {
        'hornet_tiny_7x7': 4096, 'hornet_small_gf': 4096, 'hornet_large_7x7': 4096, 'hornet_large_gf_img384': 512}
    # the reference's 22K -> 1K recipe: 4 x 8 GPUs, 16 x 1, lr 5e-5, 30 epochs, ...
    ft, ft_procs, _ = recipes['hornet_large_gf_img384']
    assert (ft_procs, ft.batch_size, ft.update_freq, ft.lr, ft.epochs, ft.warmup_epochs) == (32, 16, 1, 5e-5, 30, 0)
    assert (ft.weight_decay, ft.drop_path, ft.clip_grad, ft.layer_decay, ft.input_size) == (1e-8, 0.4, 1.0, 0.7, 384)
    assert (ft.model_ema, ft.model_ema_eval, ft.mixup, ft.cutmix, ft.use_amp) == (True, True, 0, 0, False)
    assert ft.head_map == '' and ft.finetune == './pretrained/hornet_large_gf_in22k.pth'
    # the 22K pre-training takes its class count from the folder
    l22k = recipes['hornet_large_7x7'][0]
    assert l22k.nb_classes is None and l22k.data_set == 'image_folder' and l22k.disable_eval
    # the ImageNet-1K table rows are the TRAINING_COMMANDS (the original's numbers)
    rows = re.findall(r'^\| HorNet-\S+ \(\S+\) \| `(\w+)` \| ([\d.]+) \| ([\d.]+) \| (\d+) \| (\d+) \| (.*) \|$',
                      sections['ImageNet-1K from scratch (300 epochs, 4 nodes x 8 GPUs)'], re.M)
    assert len(rows) == 6
    for model, drop_path, clip, batch, freq, aa in rows:
        cmd = next(c for c in TRAINING_COMMANDS.values() if f'--model {model} ' in c)
        args = train_main.parse_args(shlex.split(cmd))
        assert (args.drop_path, args.clip_grad, args.batch_size, args.update_freq) == (
            float(drop_path), float(clip), int(batch), int(freq)), model
        assert args.aa == (aa.strip('`') if aa.startswith('`') else 'rand-m9-mstd0.5-inc1'), model


@pytest.mark.slow
def test_defaults_are_the_originals():
    args = train_main.parse_args([])
    assert args.model == 'hornet_tiny_gf' and args.nb_classes is None and args.clip_grad_mode == 'micro'
    with torch.device('meta'):
        assert train_main.build_model(args).num_classes == 1000
    # the seed README's model zoo: HorNet-T (GF) 3.9 GFLOPs at 224, HorNet-T (7x7) 4.0
    assert round(train_main.model_gflops(args), 1) == 3.9
    assert round(train_main.model_gflops(train_main.parse_args(['--model', 'hornet_tiny_7x7'])), 1) == 4.0


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


# ----------------------------------------------------------------------------- evaluation transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalized(img: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def test_eval_transform_384_is_a_square_resize_and_224_a_center_crop():
    """--input_size 384: a 500 x 300 image becomes a direct (384, 384) bicubic resize, normalised
    (no crop, crop_pct ignored); --input_size 224: short side to int(224 / (224/256)) = 256, then
    the centre 224 x 224."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(300, 500, 3)).astype(np.uint8))  # w 500, h 300
    args = train_main.parse_args(['--input_size', '384'])
    out = datasets.build_transform(False, args)(img)
    assert out.shape == (3, 384, 384)
    torch.testing.assert_close(out, _normalized(img.resize((384, 384), Image.BICUBIC)), atol=1e-5, rtol=0)
    args.crop_pct = 0.5  # ignored at 384
    torch.testing.assert_close(datasets.build_transform(False, args)(img), out, atol=0, rtol=0)

    out = datasets.build_transform(False, train_main.parse_args(['--input_size', '224']))(img)
    resized = img.resize((426, 256), Image.BICUBIC)  # 500 * 256 / 300 = 426.7
    expect = _normalized(resized.crop((101, 16, 325, 240)))  # round((426 - 224) / 2), (256 - 224) / 2
    assert out.shape == (3, 224, 224)
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- runs of main.py

def test_image_folder_takes_class_count_from_folder(tmp_path, capsys):
    """--data_set image_folder without --nb_classes trains a 4-class model (4 class folders); the
    same count given explicitly works; a different one exits 2 with a message."""
    data = make_image_folder(str(tmp_path / 'data'), classes=4, train_per_class=4, val_per_class=1)
    flags = dict(data_set='image_folder', data_path=os.path.join(data, 'train'), disable_eval='true',
                 epochs=1, nb_classes=None, batch_size=4)
    out = str(tmp_path / 'out')
    assert train_main.run(tiny_argv(data, out, **flags)) == 0
    ckpt = torch.load(os.path.join(out, 'checkpoint-0.pth'), weights_only=True)
    assert ckpt['model']['head.weight'].shape == (4, 128) and ckpt['args']['nb_classes'] == 4
    (line,) = read_log(out)
    assert 'max_accuracy' not in line and 'test_acc1' not in line  # no evaluation
    assert set(line) == {'train_loss', 'train_class_acc', 'train_lr', 'train_min_lr', 'train_weight_decay',
                         'train_grad_norm', 'epoch', 'n_parameters', 'GFLOPs'}
    capsys.readouterr()
    flags['nb_classes'] = 5
    assert train_main.run(tiny_argv(data, str(tmp_path / 'bad'), **flags)) == 2
    err = capsys.readouterr().err
    assert 'has 4 class folders but --nb_classes is 5' in err and 'leave --nb_classes out' in err


def _tensorboard_scalars(folder: str) -> dict[str, list[tuple]]:
    """tag -> [(step, value)] from the TensorBoard event files in ``folder``."""
    out: dict[str, list[tuple]] = {}
    for event in tensorboard_events(folder):
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


@pytest.mark.slow
def test_log_keys_and_tensorboard_tags_are_the_originals(tmp_path):
    """A 2-epoch run with EMA evaluation and layer decay: log.txt has the original's keys
    (train_lr, train_min_lr, test_acc1_ema, max_ema_accuracy, GFLOPs ...) and TensorBoard the
    original's tags (loss/loss, opt/min_lr, perf/test_acc1_ema ...), per micro-batch / epoch."""
    data = make_image_folder(str(tmp_path / 'data'), classes=3, train_per_class=8, val_per_class=2)
    out = str(tmp_path / 'out')
    argv = tiny_argv(data, out, epochs=2, batch_size=4, update_freq=2, model_ema='true', model_ema_eval='true',
                     layer_decay=0.5, clip_grad=1)
    assert train_main.run(argv) == 0
    log = read_log(out)
    assert [r['epoch'] for r in log] == [0, 1]
    assert set(log[0]) == {
        'train_loss', 'train_class_acc', 'train_lr', 'train_min_lr', 'train_weight_decay', 'train_grad_norm',
        'test_acc1', 'test_acc5', 'test_loss', 'test_count', 'test_acc1_ema', 'test_acc5_ema', 'test_loss_ema',
        'test_count_ema', 'epoch', 'n_parameters', 'GFLOPs', 'max_accuracy', 'max_ema_accuracy'}
    for r in log:
        # min_lr is the most decayed of the 14 layer groups: lr x 0.5 ** 13
        assert r['train_min_lr'] == pytest.approx(r['train_lr'] * 0.5 ** 13, rel=1e-9)
        assert r['test_count'] == r['test_count_ema'] == 6
        assert r['max_accuracy'] == max(x['test_acc1'] for x in log[:r['epoch'] + 1])
        assert r['max_ema_accuracy'] == max(x['test_acc1_ema'] for x in log[:r['epoch'] + 1])
    args = train_main.parse_args(argv)
    assert log[0]['GFLOPs'] == pytest.approx(train_main.model_gflops(args)) and log[0]['GFLOPs'] > 0
    assert log[0]['n_parameters'] == sum(p.numel() for p in train_main.build_model(args, 3).parameters())

    tb = _tensorboard_scalars(out)
    assert set(tb) == {'loss/loss', 'loss/class_acc', 'opt/lr', 'opt/min_lr', 'opt/weight_decay', 'opt/grad_norm',
                       'perf/test_acc1', 'perf/test_acc5', 'perf/test_loss', 'perf/test_acc1_ema'}
    # 24 training images / batch 4 = 6 micro-batches (3 optimizer steps) per epoch
    assert [s for s, _ in tb['loss/loss']] == list(range(12))
    assert [s for s, _ in tb['opt/grad_norm']] == [1, 3, 5, 7, 9, 11]
    assert [s for s, _ in tb['perf/test_acc1_ema']] == [0, 1]
    assert [v for _, v in tb['perf/test_acc1']] == pytest.approx([r['test_acc1'] for r in log])
    assert [v for _, v in tb['perf/test_acc1_ema']] == pytest.approx([r['test_acc1_ema'] for r in log])
