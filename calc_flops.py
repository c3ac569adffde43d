"""Parameters and FLOPs of a HorNet variant, in the convention of the paper's model zoo table.

Convention (that of the published table, counted with fvcore in the original work):
- one multiply-add of a convolution or linear layer is one FLOP;
- a channels-last LayerNorm (the MLP's ``norm2`` and the final ``norm``) costs 5 FLOPs per element;
  channels-first LayerNorms and other element-wise operations are not counted;
- each ``rfft2``/``irfft2`` of a GF layer costs ``C*H*W*ceil(log2(C*H))`` (:func:`fft_flops`), where
  ``(C, H, W)`` are the last three dims of the transform's input: the ``(B, C, H, W)`` feature map for
  ``rfft2``, the ``(B, C, H, W//2+1)`` half spectrum for ``irfft2``.

Why ``log2(C*H)``: the published counter charged an FFT ``H*W*C*ceil(log2(H*W))`` (the wording of the
architecture notes), reading the input as channels-last ``(B, H, W, C)``. HorNet transforms
channels-first tensors, so what it took for ``(H, W, C)`` is ``(C, H, W)``: the element count is right,
the logarithm is of ``C*H`` instead of the transform size ``H*W``. The published GFLOPs contain these
terms, and only this reading reproduces them: with ``ceil(log2(H*W))`` the GF models would count 8.72 /
15.45 / 34.61 / 101.74 G (small, base, large, large 384) instead of the published 8.73 / 15.46 / 34.64 /
101.81. Either way the FFTs are under 0.2% of a model's FLOPs.

Counting uses ``torch.utils.flop_counter`` on the ``meta`` device (no weights are allocated), so even
the largest variant is counted in about a second.

Usage:
    python calc_flops.py --model hornet_tiny_gf --input_size 224
    python calc_flops.py --table        # the whole model zoo as a Markdown table
"""
import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import models  # also registers the hornet_* variants
import utils

aten = torch.ops.aten
VARIANTS = {  # name -> input size of the published number
    'hornet_tiny_7x7': 224, 'hornet_tiny_gf': 224, 'hornet_small_7x7': 224, 'hornet_small_gf': 224,
    'hornet_base_7x7': 224, 'hornet_base_gf': 224, 'hornet_base_gf_img384': 384,
    'hornet_large_7x7': 224, 'hornet_large_gf': 224, 'hornet_large_gf_img384': 384,
}


def fft_flops(input_shape: Sequence[int]) -> int:
    """FLOPs of one 2-D FFT over the last two dims of an NCHW input, as the published table counts them.

    ``C*H*W*ceil(log2(C*H))`` for ``input_shape = (..., C, H, W)``: the published counter's
    ``H*W*C*ceil(log2(H*W))`` applied to a channels-first tensor (see the module docstring). For the
    ``irfft2`` the input is the half spectrum, so ``W`` is the original width // 2 + 1.
    """
    channels, height, width = input_shape[-3:]
    return channels * height * width * math.ceil(math.log2(channels * height))


def _fft_op_flops(input_shape: Sequence[int], *args, out_shape=None, **kwargs) -> int:
    """``FlopCounterMode`` formula for the aten FFT ops: their first argument is the transform's input."""
    return fft_flops(input_shape)


_FFT_OPS = (aten._fft_r2c, aten._fft_c2r, aten._fft_c2c)  # rfft2, irfft2, complex FFT


def count_flops(
        model: nn.Module,
        input_size: Sequence[int] = (224, 224),
        in_chans: int = 3,
        forward: Callable[[nn.Module, torch.Tensor], Any] | None = None,
) -> dict[str, int]:
    """FLOPs of one image through ``model`` (any device, ``meta`` included), split by kind.

    Args:
        model: The network; put in eval mode.
        input_size: ``(H, W)`` of the image.
        in_chans: Image channels.
        forward: ``forward(model, image)`` to count instead of ``model(image)`` (e.g. a detector's
            dummy forward).

    Returns:
        A dict with ``conv_linear`` (multiply-adds), ``fft``, ``layernorm`` and ``total``.
    """
    ln_flops = []

    def ln_hook(module, inputs, output):
        ln_flops.append(5 * inputs[0].numel())

    # channels-last LayerNorms (models.ops.LayerNorm is nn.LayerNorm with a bf16 CUDA path), not LayerNorm2d
    hooks = [m.register_forward_hook(ln_hook) for m in model.modules()
             if type(m) in (nn.LayerNorm, models.ops.LayerNorm)]
    param = next(model.parameters())
    x = torch.zeros(1, in_chans, *input_size, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False, custom_mapping={op: _fft_op_flops for op in _FFT_OPS})
    try:
        with counter, torch.no_grad():
            if forward is None:
                model.eval()(x)
            else:
                forward(model.eval(), x)
    finally:
        for h in hooks:
            h.remove()
    by_op = counter.get_flop_counts()['Global']
    fft = sum(v for k, v in by_op.items() if k in _FFT_OPS)
    macs = (counter.get_total_flops() - fft) // 2  # torch counts a multiply-add as 2 FLOPs
    out = dict(conv_linear=macs, fft=fft, layernorm=sum(ln_flops))
    out['total'] = sum(out.values())
    return out


def analyse(name: str, input_size: int | None = None, **model_kwargs) -> dict[str, float]:
    """Parameter count and GFLOPs of a registered variant at ``input_size`` (default: its own)."""
    size = VARIANTS.get(name, 224) if input_size is None else input_size
    if size < models.MIN_INPUT_SIZE:  # 0 used to become 224 silently
        raise ValueError(f'input_size must be at least {models.MIN_INPUT_SIZE} (HorNet downsamples by 32), got {size}')
    with torch.device('meta'):
        model = timm.create_model(name, **model_kwargs)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, (size, size))
    return dict(model=name, input_size=size, params=params, gflops=flops['total'] / 1e9,
                fft_gflops=flops['fft'] / 1e9, ln_gflops=flops['layernorm'] / 1e9)


def input_size_arg(value: str) -> int:
    """argparse type for ``--input_size`` (this script's, export.py's, predict.py's): an image side of
    at least :data:`models.MIN_INPUT_SIZE`."""
    n = int(value)
    if n < models.MIN_INPUT_SIZE:
        raise argparse.ArgumentTypeError(
            f'must be at least {models.MIN_INPUT_SIZE} (HorNet downsamples by 32), got {value}')
    return n


@utils.exits_on_user_error(exit=True)
def main(argv: Sequence[str] | None = None) -> None:
    parser = utils.OneLineArgumentParser(description='HorNet parameters and FLOPs (paper convention)')
    parser.add_argument('--model', default='hornet_tiny_7x7', help='variant name, e.g. hornet_tiny_gf')
    parser.add_argument('--input_size', type=input_size_arg, default=None,
                        help='image side, at least 32 (default: the variant\'s)')
    parser.add_argument('--num_classes', type=int, default=1000)
    parser.add_argument('--table', action='store_true', help='print every variant as a Markdown table')
    args = parser.parse_args(argv)
    if args.table:
        print('| model | input | params (M) | GFLOPs |')
        print('|---|---|---|---|')
        for name in VARIANTS:
            r = analyse(name, num_classes=args.num_classes)
            print(f"| `{name}` | {r['input_size']} | {r['params'] / 1e6:.2f} | {r['gflops']:.2f} |")
        return
    valid = timm.list_models('hornet_*')
    if args.model not in valid:
        raise utils.TrainingError(f"unknown model {args.model!r}; valid: {', '.join(valid)}")
    r = analyse(args.model, args.input_size, num_classes=args.num_classes)
    print(f"Model: {r['model']}  input: {r['input_size']}x{r['input_size']}")
    print(f"Params: {r['params']:,} ({r['params'] / 1e6:.2f} M)")
    print(f"GFLOPs: {r['gflops']:.2f}")


if __name__ == '__main__':
    main()
