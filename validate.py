"""Evaluate a HorNet checkpoint on ImageNet and its robustness sets, in timm's results-table layout.

Data sets (give any subset of them; each needs its usual folder layout):

* ``--imagenet_val DIR``: ImageNet-1K val, one folder per WordNet id (``n01440764/...``);
* ``--imagenet_real [FILE]``: ImageNet-ReaL labels for those val images, a JSON list with one list of
  valid classes per image in sorted file-name order (``ILSVRC2012_val_00000001.JPEG`` first); images
  with an empty list are not counted. Without FILE, the copy timm ships is used;
* ``--imagenet_v2 DIR``: ImageNetV2, folders named by class index ``0`` .. ``999``;
* ``--imagenet_a DIR`` / ``--imagenet_r DIR``: ImageNet-A / ImageNet-R, WordNet-id folders of a
  200-class subset; the logits are restricted to that subset (timm's ``_info`` index lists);
* ``--imagenet_sketch DIR``: ImageNet-Sketch, WordNet-id folders of all 1000 classes.

Images go through the evaluation transform of ``main.py --eval`` (``datasets.eval_transform``).
The results CSV has timm's columns (model, top1, top1_err, top5, top5_err, param_count, img_size,
crop_pct, interpolation) plus ``dataset``, one row per data set.

Examples::

    python validate.py --model hornet_tiny_gf --checkpoint hornet_tiny_gf.pth \\
        --imagenet_val /data/imagenet/val --imagenet_real --imagenet_a /data/imagenet-a \\
        --imagenet_r /data/imagenet-r --results_file results-hornet_tiny_gf.csv
    python validate.py --checkpoint local-dir:hub/hornet_tiny_gf --imagenet_v2 /data/imagenetv2-matched-frequency
    python validate.py --model hornet_tiny_gf --pretrained --imagenet_sketch /data/sketch
"""
import argparse
import csv
import io
import json
import os
import pkgutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import timm
import torch
import torch.nn as nn
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_INCEPTION_MEAN
from torch.utils.data import DataLoader
from torchvision import datasets as tv_datasets
from torchvision import transforms

import datasets
import models
import run_dir
from export import create_model, input_size_arg, parse_model_kwargs, positive_int_arg
from models.hub import DownloadError
from utils import OneLineArgumentParser, TrainingError, exits_on_user_error, str2bool

COLUMNS = ['model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size', 'crop_pct', 'interpolation',
           'dataset']
LOCAL_DIR = 'local-dir:'


class ValidateError(TrainingError):
    """A data set or checkpoint that cannot be evaluated; one line."""


def _timm_info(name: str) -> list[str]:
    """Lines of one of the class lists timm ships in ``timm/data/_info``."""
    data = pkgutil.get_data('timm.data', f'_info/{name}')
    if data is None:
        raise ValidateError(f'timm {timm.__version__} does not ship _info/{name}; install timm >= 1.0')
    return data.decode('utf-8').split()


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1K WordNet ids in class-index order."""
    return _timm_info('imagenet_synsets.txt')


def subset_classes(name: str) -> tuple[list[str], list[int]]:
    """WordNet ids and ImageNet-1K class indices of the 200-class subset ``a`` or ``r``, in timm's order."""
    return _timm_info(f'imagenet_{name}_synsets.txt'), [int(i) for i in _timm_info(f'imagenet_{name}_indices.txt')]


@dataclass
class EvalSet:
    """One data set to evaluate: images with ImageNet-1K targets (or subset positions)."""
    name: str
    folder: tv_datasets.ImageFolder
    targets: list[int]  # per image: class index, or position in ``subset`` when it is set
    subset: list[int] | None = None  # ImageNet-1K indices the logits are restricted to
    real: list[list[int]] | None = None  # ReaL: valid classes per image (same order as ``targets``)


def _folder(root: str, flag: str, transform: Callable) -> tv_datasets.ImageFolder:
    if not os.path.isdir(root):
        raise ValidateError(f'{flag}: {root} is not a folder')
    try:
        # scanned as main.py scans its folders: no hidden classes or files, link loops entered once
        return datasets.ClassFolder(root, transform=transform, loader=datasets.pil_loader)
    except FileNotFoundError as e:
        raise ValidateError(f'{flag}: {root} holds no images in class sub-folders ({e})') from None


def _targets(folder: tv_datasets.ImageFolder, index: dict[str, int], flag: str, what: str) -> list[int]:
    """Each image's target: its class folder's name looked up in ``index``."""
    unknown = [c for c in folder.classes if c not in index]
    if unknown:
        raise ValidateError(f'{flag}: {folder.root} has class folders that are not {what}: '
                            f'{", ".join(unknown[:5])}{" ..." if len(unknown) > 5 else ""}')
    return [index[folder.classes[t]] for t in folder.targets]


def read_real_labels(path: str | None, folder: tv_datasets.ImageFolder) -> list[list[int]]:
    """ReaL label lists in the order of ``folder``'s images (matched by sorted file name)."""
    if path:
        try:
            with open(path, encoding='utf-8') as f:
                real = json.load(f)
        except (OSError, ValueError) as e:
            raise ValidateError(f'--imagenet_real: cannot read {path}: {e}') from None
    else:
        real = json.loads(pkgutil.get_data('timm.data', '_info/imagenet_real_labels.json'))
    if not isinstance(real, list) or not all(isinstance(r, list) for r in real):
        raise ValidateError(f'--imagenet_real: {path} is not a JSON list of label lists')
    names = [os.path.basename(p) for p, _ in folder.samples]
    if len(real) != len(names):
        raise ValidateError(f'--imagenet_real has {len(real)} label lists but --imagenet_val {folder.root} holds '
                            f'{len(names)} images; ReaL needs the whole val set')
    rank = {n: i for i, n in enumerate(sorted(names))}
    return [real[rank[n]] for n in names]


def build_sets(args: argparse.Namespace, transform: Callable) -> list[EvalSet]:
    """The data sets named on the command line, in the order of the results table."""
    synsets = {s: i for i, s in enumerate(imagenet_synsets())}
    sets = []
    if args.imagenet_val:
        folder = _folder(args.imagenet_val, '--imagenet_val', transform)
        targets = _targets(folder, synsets, '--imagenet_val', 'ImageNet-1K WordNet ids')
        sets.append(EvalSet('imagenet', folder, targets))
        if args.imagenet_real is not None:
            sets.append(EvalSet('imagenet-real', folder, targets,
                                real=read_real_labels(args.imagenet_real or None, folder)))
    elif args.imagenet_real is not None:
        raise ValidateError('--imagenet_real labels the --imagenet_val images; pass --imagenet_val DIR too')
    if args.imagenet_v2:
        folder = _folder(args.imagenet_v2, '--imagenet_v2', transform)
        sets.append(EvalSet('imagenetv2', folder, _targets(folder, {str(i): i for i in range(1000)}, '--imagenet_v2',
                                                           'class indices 0..999')))
    for key in ('a', 'r'):
        root = getattr(args, f'imagenet_{key}')
        if root:
            flag = f'--imagenet_{key}'
            wnids, indices = subset_classes(key)
            folder = _folder(root, flag, transform)
            targets = _targets(folder, {w: i for i, w in enumerate(wnids)}, flag,
                               f'among the 200 ImageNet-{key.upper()} classes')
            sets.append(EvalSet(f'imagenet-{key}', folder, targets, subset=indices))
    if args.imagenet_sketch:
        folder = _folder(args.imagenet_sketch, '--imagenet_sketch', transform)
        sets.append(EvalSet('imagenet-sketch', folder, _targets(folder, synsets, '--imagenet_sketch',
                                                               'ImageNet-1K WordNet ids')))
    if not sets:
        raise ValidateError('no data set given; pass at least one of --imagenet_val, --imagenet_v2, --imagenet_a, '
                            '--imagenet_r, --imagenet_sketch')
    return sets


def load_model(source: str, name: str | None, pretrained: bool = False, checkpoint_key: str = 'auto',
               model_kwargs: dict | None = None) -> tuple[nn.Module, str]:
    """The model to evaluate (eval mode) and its name for the results table.

    ``source`` is a checkpoint file (read by ``export.create_model``, with ``name`` the variant), a
    hub folder ``local-dir:DIR`` (``export.py --format hub``), or empty: ``name`` with its released
    weights (``pretrained``) or random ones.
    """
    if source.startswith(LOCAL_DIR):
        folder = source[len(LOCAL_DIR):]
        if not os.path.isfile(os.path.join(folder, 'config.json')):
            raise ValidateError(f'--checkpoint {source}: {folder} has no config.json; write it with '
                                'export.py --format hub')
        model = timm.create_model(source, pretrained=True, **(model_kwargs or {})).eval()
        return model, model.pretrained_cfg['architecture']
    if not name:
        raise ValidateError('--model is required with a checkpoint file or --pretrained (e.g. --model hornet_tiny_gf)')
    if pretrained:
        if source:
            raise ValidateError('--pretrained loads the released weights; leave out --checkpoint, or --pretrained')
        valid = timm.list_models('hornet_*')
        if name.split('.')[0] not in valid:
            raise ValidateError(f'unknown model {name!r}; valid names: {", ".join(valid)}')
        return timm.create_model(name, pretrained=True, **(model_kwargs or {})).eval(), name
    return create_model(name, source or None, checkpoint_key, None, model_kwargs), name


def transform_info(transform: transforms.Compose, input_size: int) -> tuple[float, str]:
    """``crop_pct`` and interpolation the evaluation transform applies (read off the transform)."""
    resize = transform.transforms[0]
    size = resize.size if isinstance(resize.size, int) else None
    if isinstance(resize.size, Sequence) and len(resize.size) == 1:
        size = resize.size[0]
    crop_pct = 1.0 if size is None else round(input_size / size, 4)
    return crop_pct, resize.interpolation.value


@torch.no_grad()
def evaluate_set(model: nn.Module, ev: EvalSet, device: torch.device, batch_size: int, num_workers: int,
                 print_freq: int = 50) -> dict[str, float]:
    """Top-1/top-5 (percent) and the number of images counted."""
    loader = DataLoader(ev.folder, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    subset = torch.tensor(ev.subset, device=device) if ev.subset is not None else None
    top5 = []
    start = time.time()
    for i, (images, _) in enumerate(loader):
        logits = model(images.to(device)).float()
        if subset is not None:
            logits = logits[:, subset]
        top5.append(logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu())
        if print_freq and (i + 1) % print_freq == 0 and i + 1 < len(loader):
            eta = (time.time() - start) / (i + 1) * (len(loader) - i - 1)
            print(f'{ev.name}: [{i + 1}/{len(loader)}] ETA {eta:.0f} s', flush=True)
    pred = torch.cat(top5).tolist()
    if ev.real is not None:
        counted = [(p, r) for p, r in zip(pred, ev.real, strict=True) if r]
        hit1 = sum(p[0] in r for p, r in counted)
        hit5 = sum(any(c in r for c in p) for p, r in counted)
        n = len(counted)
    else:
        hit1 = sum(p[0] == t for p, t in zip(pred, ev.targets, strict=True))
        hit5 = sum(t in p for p, t in zip(pred, ev.targets, strict=True))
        n = len(pred)
    return dict(top1=100 * hit1 / max(n, 1), top5=100 * hit5 / max(n, 1), count=n)


def result_row(model_name: str, model: nn.Module, dataset: str, metrics: dict[str, float], img_size: int,
               crop_pct: float, interpolation: str) -> dict:
    """One row of the results table, rounded as timm's ``validate.py`` rounds."""
    top1, top5 = round(metrics['top1'], 4), round(metrics['top5'], 4)
    return dict(model=model_name, top1=top1, top1_err=round(100 - top1, 4), top5=top5, top5_err=round(100 - top5, 4),
                param_count=round(sum(p.numel() for p in model.parameters()) / 1e6, 2), img_size=img_size,
                crop_pct=crop_pct, interpolation=interpolation, dataset=dataset)


def format_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def trained_mean_and_std(source: str, model: nn.Module) -> bool:
    """Whether ``source``'s weights were trained with ImageNet's mean and std (else Inception's), as
    ``main.py --eval`` on them with their training flags: a training checkpoint's saved flag, a hub
    folder's config.json mean, true for released weights."""
    if source.startswith(LOCAL_DIR):
        return tuple(model.pretrained_cfg.get('mean', IMAGENET_DEFAULT_MEAN)) != IMAGENET_INCEPTION_MEAN
    return run_dir.imagenet_mean_and_std(run_dir.saved_args(run_dir.load_file(source, mmap=True))) if source else True


def get_args_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser('validate.py', description=__doc__.split('\n\n')[0])
    g = parser.add_argument_group('model')
    g.add_argument('--model', default=None, help='variant, e.g. hornet_tiny_gf (not needed with local-dir:)')
    g.add_argument('--checkpoint', default='', help='weights file (.pth/.safetensors) or local-dir:DIR (a hub folder)')
    g.add_argument('--checkpoint_key', default='auto', help='checkpoint entry to evaluate, e.g. model_ema')
    g.add_argument('--pretrained', action='store_true', help='the released weights of --model (downloaded once)')
    g.add_argument('--model_kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                   help='extra timm.create_model kwargs as Python literals, e.g. depths=1,1,1,1 base_dim=16')
    g = parser.add_argument_group('data sets')
    g.add_argument('--imagenet_val', default='', metavar='DIR', help='ImageNet-1K val, WordNet-id folders')
    g.add_argument('--imagenet_real', nargs='?', const='', default=None, metavar='FILE',
                   help='ImageNet-ReaL labels of the --imagenet_val images (default: the copy timm ships)')
    g.add_argument('--imagenet_v2', default='', metavar='DIR', help='ImageNetV2, folders 0..999')
    g.add_argument('--imagenet_a', default='', metavar='DIR', help='ImageNet-A, WordNet-id folders (200 classes)')
    g.add_argument('--imagenet_r', default='', metavar='DIR', help='ImageNet-R, WordNet-id folders (200 classes)')
    g.add_argument('--imagenet_sketch', default='', metavar='DIR', help='ImageNet-Sketch, WordNet-id folders')
    g = parser.add_argument_group('evaluation')
    g.add_argument('--input_size', type=input_size_arg, default=None,
                   help="image size (default: the model's pretrained_cfg input size)")
    g.add_argument('--crop_pct', type=float, default=None, help='as main.py --crop_pct (default 0.875; none from 384)')
    g.add_argument('--imagenet_default_mean_and_std', type=str2bool, default=None,
                   help="as main.py (default: the checkpoint's training flag or hub config's mean, else true)")
    g.add_argument('--batch_size', type=positive_int_arg, default=64)
    g.add_argument('--num_workers', type=int, default=4)
    g.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', help='cuda or cpu')
    g.add_argument('--results_file', default='', help='write the results CSV here (it is always printed)')
    g.add_argument('--overwrite', action='store_true', help='replace an existing --results_file')
    return parser


@exits_on_user_error()
def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate and write the table; returns the exit status (0 ok, 2 error, with one line on stderr)."""
    args = get_args_parser().parse_args(argv)
    try:
        if args.results_file and os.path.exists(args.results_file) and not args.overwrite:
            raise ValidateError(f'--results_file {args.results_file} exists; pass --overwrite to replace it')
        if args.device.startswith('cuda') and not torch.cuda.is_available():
            raise ValidateError('--device cuda but no GPU is visible; pass --device cpu')
        model, name = load_model(args.checkpoint, args.model, args.pretrained, args.checkpoint_key,
                                 parse_model_kwargs(args.model_kwargs))
        input_size = args.input_size or model.pretrained_cfg['input_size'][-1]
        mean_std = args.imagenet_default_mean_and_std
        if mean_std is None:
            mean_std = trained_mean_and_std(args.checkpoint, model)
        transform = datasets.eval_transform(input_size, args.crop_pct, mean_std)
        sets = build_sets(args, transform)
        device = torch.device(args.device)
        model.to(device)
        crop_pct, interpolation = transform_info(transform, input_size)
        rows = []
        for ev in sets:
            metrics = evaluate_set(model, ev, device, args.batch_size, args.num_workers)
            rows.append(result_row(name, model, ev.name, metrics, input_size, crop_pct, interpolation))
            print(f'{ev.name}: {metrics["count"]} images, top-1 {metrics["top1"]:.3f}, top-5 {metrics["top5"]:.3f}',
                  flush=True)
    except (ValidateError, ValueError, KeyError, FileNotFoundError, DownloadError, TrainingError,
            models.CheckpointMismatchError, models.CheckpointFileError) as e:
        print(f'error: {e.args[0] if isinstance(e, KeyError) else e}', file=sys.stderr)
        return 2
    table = format_csv(rows)
    print(table, end='')
    if args.results_file:
        try:
            run_dir._write_atomic(args.results_file, 'csv', lambda f: f.write(table.encode()))
        except OSError as e:
            print(f'error: cannot write {args.results_file}: {e.strerror or e}', file=sys.stderr)
            return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
