"""Classify images with a HorNet checkpoint: top-5 ImageNet classes with probabilities.

Images are decoded as the data sets decode them (16-bit and float images scaled to 8 bits), turned
upright by their EXIF orientation (a phone photo), and preprocessed by the same function as
``main.py --eval`` (``datasets.eval_transform``): with the checkpoint's training flags
(``--input_size``, ``--crop_pct``, mean/std) when it holds them, else the variant's input size.
Class names are the checkpoint's (the class folders it was trained on) when it holds them, else
``data/imagenet_classes.txt`` (WordNet id and name per line, in the standard ImageNet-1k order).

Example::

    python predict.py --model hornet_tiny_gf --checkpoint hornet_tiny_gf.pth cat.jpg dog.png

Images are decoded one at a time and classified in batches of ``--batch_size`` as they are read.
Exits with status 1 if any image could not be read (the readable ones are still classified), 2
on a bad argument or an unusable checkpoint (a one-line message).
"""
import argparse
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from PIL import Image, ImageOps
from timm.data import create_transform

import datasets
import models
import run_dir
from export import create_model, input_size_arg, parse_model_kwargs, positive_int_arg
from utils import OneLineArgumentParser, TrainingError, exits_on_user_error

K = TypeVar('K')

DEFAULT_CLASS_NAMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'imagenet_classes.txt')


def load_class_names(path: str = DEFAULT_CLASS_NAMES) -> list[str]:
    """Class names, one per line; a leading ``<wnid>\\t`` is dropped."""
    with open(path, encoding='utf-8') as f:
        return [line.rstrip('\n').split('\t')[-1] for line in f if line.strip()]


def read_image(path: str) -> Image.Image:
    """Open ``path`` as an upright (EXIF orientation applied) RGB image (``datasets.to_rgb``);
    raises ``OSError`` with a readable message if it is not one."""
    try:
        with Image.open(path) as img:
            return datasets.to_rgb(ImageOps.exif_transpose(img))
    except FileNotFoundError:
        raise OSError(f'{path}: no such file') from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise OSError(f'{path}: not a readable image ({e})') from None


@torch.no_grad()
def predict(
        model: torch.nn.Module, images: Iterable[tuple[K, Image.Image]], transform: Callable | dict,
        topk: int = 5, batch_size: int = 16,
) -> Iterator[tuple[K, list[tuple[int, float]]]]:
    """Top-``topk`` (class index, probability) pairs for each ``(key, image)``, yielded batch by batch.

    ``transform``: image to tensor (:func:`eval_transform`), or a timm data config for timm's
    evaluation transform. Each image is transformed as soon as it arrives and then dropped, so a
    lazy ``images`` keeps at most one decoded image and ``batch_size`` input tensors in memory.
    """
    if isinstance(transform, dict):
        transform = create_transform(**transform, is_training=False)
    keys: list[K] = []
    tensors: list[torch.Tensor] = []

    def flush() -> list[tuple[K, list[tuple[int, float]]]]:
        probs = model(torch.stack(tensors)).float().softmax(dim=-1)
        values, indices = probs.topk(min(topk, probs.shape[-1]), dim=-1)
        tops = [list(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(indices, values, strict=True)]
        out = list(zip(keys, tops, strict=True))
        keys.clear()
        tensors.clear()
        return out

    for key, img in images:
        keys.append(key)
        tensors.append(transform(img))
        del img
        if len(tensors) == batch_size:
            yield from flush()
    if tensors:
        yield from flush()


def checkpoint_meta(path: str) -> tuple[list[str] | None, dict[str, Any]]:
    """The class names and the training flags (``args``) a checkpoint holds (either may be absent)."""
    ckpt = run_dir.load_file(path, mmap=True)  # mapped: create_model already read the weights
    return run_dir.label_names(ckpt), run_dir.saved_args(ckpt)


def eval_transform(model: torch.nn.Module, train_args: dict[str, Any], input_size: int | None = None) -> Callable:
    """``main.py --eval``'s preprocessing for ``model``: the checkpoint's ``input_size``, ``crop_pct`` and
    mean/std flags when it has them (``input_size`` overrides), else the variant's input size."""
    size = input_size or train_args.get('input_size') or model.pretrained_cfg['input_size'][-1]
    return datasets.eval_transform(int(size), train_args.get('crop_pct'),
                                   run_dir.imagenet_mean_and_std(train_args))


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        'HorNet predict', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('images', nargs='*', metavar='IMAGE', help='image files (any format PIL reads)')
    parser.add_argument('--model', required=True, help='variant name, e.g. hornet_tiny_gf')
    parser.add_argument('--checkpoint', required=True, help='weights (.pth)')
    parser.add_argument('--checkpoint_key', default='auto',
                        help='checkpoint entry to load, e.g. model_ema (default: model/module/state_dict)')
    parser.add_argument('--input_size', type=input_size_arg, default=None,
                        help='square crop size, at least 32 (default: the variant\'s pretrained_cfg size)')
    parser.add_argument('--topk', type=int, default=5)
    parser.add_argument('--batch_size', type=positive_int_arg, default=16,
                        help='images decoded and classified together (memory grows with it)')
    parser.add_argument('--class_names', default=None,
                        help='file with one class name per line (default: the checkpoint\'s class names, '
                             'else ImageNet-1k names); must agree with the checkpoint\'s names if it has them')
    parser.add_argument('--model_kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                        help='extra timm.create_model kwargs as Python literals, e.g. depths=1,1,1,1 base_dim=16')
    return parser


@exits_on_user_error()
def main(argv: Sequence[str] | None = None) -> int:
    """Print the top-k classes of each image; returns the exit status."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    # --model_kwargs takes every following word; words without '=' are the images after it
    args.images += [a for a in args.model_kwargs if '=' not in a]
    args.model_kwargs = [a for a in args.model_kwargs if '=' in a]
    if not args.images:
        parser.error('the following arguments are required: IMAGE')
    if args.topk < 1:
        parser.error(f'argument --topk: must be at least 1, got {args.topk}')
    try:
        # weights-only load through models.read_weights: a missing, empty, text, truncated or
        # pickled-objects file, or a --checkpoint_key that names no entry, is a CheckpointFileError
        # whose message is one line
        model = create_model(args.model, args.checkpoint, args.checkpoint_key,
                             model_kwargs=parse_model_kwargs(args.model_kwargs))
    except (ValueError, models.CheckpointMismatchError, models.CheckpointFileError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    try:
        ckpt_names, train_args = checkpoint_meta(args.checkpoint)
        names = ckpt_names
        if args.class_names is not None:  # labels mean the same everywhere: the file must agree
            names = load_class_names(args.class_names)
            if ckpt_names is not None:
                datasets.check_same_classes(names, ckpt_names, f'--class_names {args.class_names}',
                                            f'checkpoint {args.checkpoint}')
    except OSError as e:
        print(f'error: --class_names {args.class_names}: {e.strerror or e}', file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if names is None:
        names = load_class_names(DEFAULT_CLASS_NAMES)
    if len(names) != model.num_classes:
        print(f'note: {args.class_names or DEFAULT_CLASS_NAMES} has {len(names)} names but the model has '
              f'{model.num_classes} classes; printing class indices', file=sys.stderr)
        names = [f'class {i}' for i in range(model.num_classes)]
    transform = eval_transform(model, train_args, args.input_size)
    failed: list[str] = []

    def readable() -> Iterator[tuple[str, Image.Image]]:
        """Decode lazily, one image at a time, reporting unreadable ones as they come."""
        for path in args.images:
            try:
                img = read_image(path)
            except OSError as e:
                print(f'error: {e}', file=sys.stderr)
                failed.append(path)
                continue
            yield path, img
            del img  # the caller has transformed it: free the decoded pixels before the next one

    for path, top in predict(model, readable(), transform, args.topk, args.batch_size):
        print(f'{path}:')
        for rank, (idx, prob) in enumerate(top, 1):
            print(f'  {rank}. {prob:.4f}  {names[idx]}')
        sys.stdout.flush()
    if len(failed) == len(args.images):
        print('error: none of the given images could be read', file=sys.stderr)
        return 1
    if failed:
        print(f'error: {len(failed)} of {len(args.images)} images could not be read: {", ".join(failed)}',
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
