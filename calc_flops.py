"""Parameters and FLOPs of a HorNet variant, in the convention of the paper's model zoo table.

Convention (that of the published table, counted with fvcore in the original work):
- one multiply-add of a convolution or linear layer is one FLOP;
- a channels-last LayerNorm (the MLP's ``norm2`` and the final ``norm``) costs 5 FLOPs per element;
  channels-first LayerNorms and other element-wise operations are not counted;
- each ``rfft2``/``irfft2`` costs ``H*W*C*ceil(log2(H*W))`` where ``(B, H, W, C)`` names the dims of
  the transform's input tensor as the published counter read them (on HorNet's NCHW tensors these are
  channel, height and width/frequency).

Counting uses ``torch.utils.flop_counter`` on the ``meta`` device (no weights are allocated), so even
the largest variant is counted in about a second.

Usage:
    python calc_flops.py --model hornet_tiny_gf --input_size 224
    python calc_flops.py --table        # the whole model zoo as a Markdown table
"""
import argparse
import math
from typing import Any, Callable, Dict, Optional, Sequence

import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import models  # noqa: F401  (registers the hornet_* variants)

aten = torch.ops.aten
VARIANTS = {  # name -> input size of the published number
    'hornet_tiny_7x7': 224, 'hornet_tiny_gf': 224, 'hornet_small_7x7': 224, 'hornet_small_gf': 224,
    'hornet_base_7x7': 224, 'hornet_base_gf': 224, 'hornet_base_gf_img384': 384,
    'hornet_large_7x7': 224, 'hornet_large_gf': 224, 'hornet_large_gf_img384': 384,
}
MIN_INPUT_SIZE = 32  # the stem (stride 4) and three 2x downsamplings need a 32 px input


def _fft_flops(x_shape: Sequence[int], *args, out_shape=None, **kwargs) -> int:
    h, w, c = x_shape[-3:]
    return h * w * c * math.ceil(math.log2(h * w))


_FFT_OPS = (aten._fft_r2c, aten._fft_c2r, aten._fft_c2c)


def count_flops(
        model: nn.Module,
        input_size: Sequence[int] = (224, 224),
        in_chans: int = 3,
        forward: Optional[Callable[[nn.Module, torch.Tensor], Any]] = None,
) -> Dict[str, int]:
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

    hooks = [m.register_forward_hook(ln_hook) for m in model.modules() if type(m) is nn.LayerNorm]
    param = next(model.parameters())
    x = torch.zeros(1, in_chans, *input_size, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False, custom_mapping={op: _fft_flops for op in _FFT_OPS})
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


def analyse(name: str, input_size: Optional[int] = None, **model_kwargs) -> Dict[str, float]:
    """Parameter count and GFLOPs of a registered variant at ``input_size`` (default: its own)."""
    size = VARIANTS.get(name, 224) if input_size is None else input_size
    if size < MIN_INPUT_SIZE:  # 0 used to become 224 silently
        raise ValueError(f'input_size must be at least {MIN_INPUT_SIZE} (HorNet downsamples by 32), got {size}')
    with torch.device('meta'):
        model = timm.create_model(name, **model_kwargs)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, (size, size))
    return dict(model=name, input_size=size, params=params, gflops=flops['total'] / 1e9,
                fft_gflops=flops['fft'] / 1e9, ln_gflops=flops['layernorm'] / 1e9)


def _input_size_arg(value: str) -> int:
    n = int(value)
    if n < MIN_INPUT_SIZE:
        raise argparse.ArgumentTypeError(f'must be at least {MIN_INPUT_SIZE} (HorNet downsamples by 32), got {value}')
    return n


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description='HorNet parameters and FLOPs (paper convention)')
    parser.add_argument('--model', default='hornet_tiny_7x7', help='variant name, e.g. hornet_tiny_gf')
    parser.add_argument('--input_size', type=_input_size_arg, default=None,
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
        raise SystemExit(f"unknown model {args.model!r}; valid: {', '.join(valid)}")
    r = analyse(args.model, args.input_size, num_classes=args.num_classes)
    print(f"Model: {r['model']}  input: {r['input_size']}x{r['input_size']}")
    print(f"Params: {r['params']:,} ({r['params'] / 1e6:.2f} M)")
    print(f"GFLOPs: {r['gflops']:.2f}")


if __name__ == '__main__':
    main()
