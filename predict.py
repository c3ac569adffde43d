"""Classify images with a HorNet checkpoint: top-5 ImageNet classes with probabilities.

Images are preprocessed exactly as the variant was evaluated, from its ``pretrained_cfg``
(resize to ``input_size / crop_pct``, center crop, ImageNet mean/std) via timm's
``resolve_data_config`` / ``create_transform``. Class names come from ``data/imagenet_classes.txt``
(WordNet id and name per line, in the standard ImageNet-1k index order).

Example::

    python predict.py --model hornet_tiny_gf --checkpoint hornet_tiny_gf.pth cat.jpg dog.png

Exits with status 1 if any image could not be read (the readable ones are still classified).
"""
import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from export import create_model, parse_model_kwargs
import models

DEFAULT_CLASS_NAMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'imagenet_classes.txt')


def load_class_names(path: str = DEFAULT_CLASS_NAMES) -> List[str]:
    """Class names, one per line; a leading ``<wnid>\\t`` is dropped."""
    with open(path, encoding='utf-8') as f:
        return [line.rstrip('\n').split('\t')[-1] for line in f if line.strip()]


def read_image(path: str) -> Image.Image:
    """Open ``path`` as an RGB image; raises ``OSError`` with a readable message if it is not one."""
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except FileNotFoundError:
        raise OSError(f'{path}: no such file') from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise OSError(f'{path}: not a readable image ({e})') from None


@torch.no_grad()
def predict(
        model: torch.nn.Module, images: Sequence[Image.Image], data_config: Dict, topk: int = 5,
        batch_size: int = 16,
) -> List[List[Tuple[int, float]]]:
    """Top-``topk`` (class index, probability) pairs for each image."""
    transform = create_transform(**data_config, is_training=False)
    results = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([transform(img) for img in images[start:start + batch_size]])
        probs = model(batch).float().softmax(dim=-1)
        values, indices = probs.topk(min(topk, probs.shape[-1]), dim=-1)
        results += [list(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]
    return results


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        'HorNet predict', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('images', nargs='*', metavar='IMAGE', help='image files (any format PIL reads)')
    parser.add_argument('--model', required=True, help='variant name, e.g. hornet_tiny_gf')
    parser.add_argument('--checkpoint', required=True, help='weights (.pth)')
    parser.add_argument('--checkpoint_key', default='auto',
                        help='checkpoint entry to load, e.g. model_ema (default: model/module/state_dict)')
    parser.add_argument('--input_size', type=int, default=None,
                        help='square crop size (default: the variant\'s pretrained_cfg size)')
    parser.add_argument('--topk', type=int, default=5)
    parser.add_argument('--class_names', default=DEFAULT_CLASS_NAMES,
                        help='file with one class name per line (default: ImageNet-1k names)')
    parser.add_argument('--model_kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                        help='extra timm.create_model kwargs as Python literals, e.g. depths=1,1,1,1 base_dim=16')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the top-k classes of each image; returns the exit status."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    # --model_kwargs takes every following word; words without '=' are the images after it
    args.images += [a for a in args.model_kwargs if '=' not in a]
    args.model_kwargs = [a for a in args.model_kwargs if '=' in a]
    if not args.images:
        parser.error('the following arguments are required: IMAGE')
    images, paths, failed = [], [], []
    for path in args.images:
        try:
            images.append(read_image(path))
            paths.append(path)
        except OSError as e:
            print(f'error: {e}', file=sys.stderr)
            failed.append(path)
    if not images:
        print('error: none of the given images could be read', file=sys.stderr)
        return 1
    try:
        model = create_model(args.model, args.checkpoint, args.checkpoint_key,
                             model_kwargs=parse_model_kwargs(args.model_kwargs))
    except (ValueError, KeyError, FileNotFoundError, models.CheckpointMismatchError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    names = load_class_names(args.class_names)
    if len(names) != model.num_classes:
        print(f'note: {args.class_names} has {len(names)} names but the model has {model.num_classes} '
              'classes; printing class indices', file=sys.stderr)
        names = [f'class {i}' for i in range(model.num_classes)]

    data_config = resolve_data_config({'input_size': (3, args.input_size, args.input_size)} if args.input_size else {},
                                      model=model)
    for path, top in zip(paths, predict(model, images, data_config, args.topk)):
        print(f'{path}:')
        for rank, (idx, prob) in enumerate(top, 1):
            print(f'  {rank}. {prob:.4f}  {names[idx]}')
    if failed:
        print(f'error: {len(failed)} of {len(args.images)} images could not be read: {", ".join(failed)}',
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
