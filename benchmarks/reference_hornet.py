"""A straightforward HorNet, written from the architecture specification: the plain-formula oracle.

The optimized model in ``models/hornet.py`` (with its fast paths in ``models/ops.py``) must compute
the same numbers as this one (tests/test_models.py) and run faster (benchmarks/throughput.py, where
it is the ``reference`` yardstick). This file spells the network out the
plain way the specification reads, in NCHW throughout: the channels-first LayerNorm as separate
mean / variance / normalize / affine ops, gnConv as one ``proj_in`` followed by channel splits, the
gate scale and the layer scales as their own multiplications, the global filter with a complex
multiply, the local/global interleave by stacking on a new channel axis. Parameter names equal the
released checkpoints' (``ReferenceHorNet(...).load_state_dict(hornet.state_dict())`` is strict).
"""
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['ReferenceHorNet', 'reference_from', 'RefLayerNormCF', 'RefGlobalLocalFilter', 'RefGnConv']


class RefLayerNormCF(nn.Module):
    """LN-cf: mean and biased variance over the channels of an NCHW tensor, eps, per-channel affine."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class RefGlobalLocalFilter(nn.Module):
    """pre_norm -> (3x3 depthwise | FFT filter) on the two channel halves -> interleave -> post_norm."""

    def __init__(self, dim: int, h: int, w: int):
        super().__init__()
        self.dw = nn.Conv2d(dim // 2, dim // 2, kernel_size=3, padding=1, bias=False, groups=dim // 2)
        self.complex_weight = nn.Parameter(torch.randn(dim // 2, h, w, 2) * 0.02)
        self.pre_norm = RefLayerNormCF(dim)
        self.post_norm = RefLayerNormCF(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(x)
        x1, x2 = torch.chunk(x, 2, dim=1)
        x1 = self.dw(x1)
        dtype = x2.dtype
        x2 = x2.float()
        B, C, H, W = x2.shape
        x2 = torch.fft.rfft2(x2, dim=(2, 3), norm='ortho')
        weight = self.complex_weight
        if weight.shape[1:3] != x2.shape[2:4]:
            # bilinear, align_corners=True, real and imaginary parts independently
            weight = F.interpolate(weight.permute(3, 0, 1, 2), size=x2.shape[2:4], mode='bilinear',
                                   align_corners=True).permute(1, 2, 3, 0)
        x2 = x2 * torch.view_as_complex(weight.float().contiguous())
        x2 = torch.fft.irfft2(x2, s=(H, W), dim=(2, 3), norm='ortho').to(dtype)
        x = torch.cat([x1.unsqueeze(2), x2.unsqueeze(2)], dim=2).reshape(B, 2 * C, H, W)
        return self.post_norm(x)


class RefGnConv(nn.Module):
    """gnConv of order n: proj_in, split p | q, mixer(q) * s split into gates, recursion, proj_out."""

    def __init__(self, dim: int, order: int, scale: float, gf_size: tuple[int, int] | None, kernel_size: int = 7):
        super().__init__()
        self.order = order
        self.dims = [dim // 2 ** i for i in range(order)]
        self.dims.reverse()
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        if gf_size is None:
            self.dwconv = nn.Conv2d(sum(self.dims), sum(self.dims), kernel_size, padding=(kernel_size - 1) // 2,
                                    groups=sum(self.dims))
        else:
            self.dwconv = RefGlobalLocalFilter(sum(self.dims), *gf_size)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.pws = nn.ModuleList([nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1)])
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.proj_in(x)
        p, q = torch.split(fused, (self.dims[0], sum(self.dims)), dim=1)
        q = self.dwconv(q) * self.scale
        gates = torch.split(q, self.dims, dim=1)
        y = p * gates[0]
        for i in range(self.order - 1):
            y = self.pws[i](y) * gates[i + 1]
        return self.proj_out(y)


class RefBlock(nn.Module):
    def __init__(self, dim: int, order: int, scale: float, gf_size, drop_path: float, ls_init: float):
        super().__init__()
        self.norm1 = RefLayerNormCF(dim)
        self.gnconv = RefGnConv(dim, order, scale, gf_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma1 = nn.Parameter(ls_init * torch.ones(dim))
        self.gamma2 = nn.Parameter(ls_init * torch.ones(dim))
        self.drop_prob = drop_path

    def drop_path(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0. or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1.view(-1, 1, 1) * self.gnconv(self.norm1(x)))
        y = x.permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm2(y))))
        y = (self.gamma2 * y).permute(0, 3, 1, 2)
        return x + self.drop_path(y)


class ReferenceHorNet(nn.Module):
    """The whole classifier, same keys as the released checkpoints (layer scale always on)."""

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, depths: Sequence[int] = (2, 3, 18, 2),
                 base_dim: int = 64, orders: Sequence[int] = (2, 3, 4, 5), scale: float = 1 / 3,
                 gf_sizes: Sequence[tuple[int, int] | None] = (None, None, None, None),
                 drop_path_rate: float = 0., layer_scale_init_value: float = 1e-6):
        super().__init__()
        dims = [base_dim * 2 ** i for i in range(4)]
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), RefLayerNormCF(dims[0]))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                RefLayerNormCF(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        self.stages = nn.ModuleList()
        k = 0
        for i in range(4):
            self.stages.append(nn.Sequential(*[
                RefBlock(dims[i], orders[i], scale, gf_sizes[i], rates[k + j], layer_scale_init_value)
                for j in range(depths[i])]))
            k += depths[i]
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.head(self.norm(x.mean([-2, -1])))


def reference_from(model: nn.Module) -> ReferenceHorNet:
    """A :class:`ReferenceHorNet` with the architecture and the weights of a ``models.HorNet``."""
    gnconvs = [stage[0].gnconv for stage in model.stages]
    gf_sizes = [tuple(g.dwconv.complex_weight.shape[1:3]) if hasattr(g.dwconv, 'complex_weight') else None
                for g in gnconvs]
    dims = [stage[0].norm2.normalized_shape[0] for stage in model.stages]
    ref = ReferenceHorNet(
        in_chans=model.downsample_layers[0][0].in_channels, num_classes=model.head.out_features,
        depths=[len(s) for s in model.stages], base_dim=dims[0], orders=[g.order for g in gnconvs],
        scale=gnconvs[0].scale, gf_sizes=gf_sizes)
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref
