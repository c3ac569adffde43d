"""Inference/training throughput of HorNet variants on this machine, printed as one table.

Compares, in one run and on the same weights:
- ``literal``: the channels-first LayerNorm written as element-wise ops (mean, variance, sqrt,
  divide), as the original release computes it;
- ``ours``: this repo's model (fused ``F.layer_norm`` on a permuted view, via timm's LayerNorm2d);
- ``ours+bf16``: the same under ``torch.autocast(dtype=torch.bfloat16)`` (with ``--bf16``, the
  default on CUDA; on CPU, bf16 depthwise convolutions take a slow path and this mode runs ~10x
  slower than fp32, so it is off there).

Usage:
    python benchmarks/model_speed.py --models hornet_tiny_7x7 hornet_tiny_gf --batch_size 8 --input_size 224
"""
import argparse
import copy
import time

import timm
import torch
import torch.nn as nn
from timm.layers import LayerNorm2d

import hornet  # noqa: F401  (registers hornet_* with timm; `pip install -e .` from the repository root)


class LiteralLayerNorm2d(nn.Module):
    """Channels-first LN as separate element-wise ops (the original release's formulation)."""

    def __init__(self, ln: LayerNorm2d):
        super().__init__()
        self.weight, self.bias, self.eps = ln.weight, ln.bias, ln.eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def literal(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, LayerNorm2d):
                setattr(m, child_name, LiteralLayerNorm2d(child))
    return model


def bench(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=['hornet_tiny_7x7', 'hornet_tiny_gf'])
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--input_size', type=int, default=224)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--bf16', default=None, action=argparse.BooleanOptionalAction,
                   help='also time bf16 autocast (default: on CUDA only)')
    args = p.parse_args()
    dev = torch.device(args.device)
    bf16 = args.bf16 if args.bf16 is not None else dev.type == 'cuda'
    print(f'device: {dev}  torch {torch.__version__}  threads {torch.get_num_threads()}  '
          f'batch {args.batch_size}  input {args.input_size}')
    cols = ['literal img/s', 'ours img/s'] + (['ours+bf16 img/s'] if bf16 else []) + ['ours / literal'] \
        + (['bf16 / literal'] if bf16 else [])
    print('| model | mode | ' + ' | '.join(cols) + ' |')
    print('|---' * (len(cols) + 2) + '|')
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=dev)
    for name in args.models:
        ours = timm.create_model(name).to(dev)
        lit = literal(ours)
        for mode in ('infer', 'train'):
            rates = []
            for model, amp in ((lit, False), (ours, False), (ours, True))[:3 if bf16 else 2]:
                model.train(mode == 'train')

                def step():
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                        if mode == 'infer':
                            with torch.no_grad():
                                model(x)
                        else:
                            model(x).float().mean().backward()
                    if dev.type == 'cuda':
                        torch.cuda.synchronize()

                rates.append(args.batch_size / bench(step, 1, args.iters))
            cells = [f'{r:.1f}' for r in rates] + [f'{r / rates[0]:.2f}x' for r in rates[1:]]
            print(f'| `{name}` | {mode} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
