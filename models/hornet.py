"""HorNet: vision backbones built on recursive gated convolution (gnConv).

Paper: "HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions",
Rao et al., NeurIPS 2022 (arXiv:2207.14284).

This file is the one definition of the network in this project. Parameter names follow the
officially released checkpoints exactly, so they load with ``strict=True``. Building blocks come
first (filter -> gnConv -> block), then the model, the checkpoint adapter and the timm variants.
"""
import contextlib
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, get_device_dtype, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._features import FeatureGetterNet, feature_take_indices
from torch.utils._python_dispatch import is_in_torch_dispatch_mode
from torch.utils.checkpoint import checkpoint

from .hub import RELEASE_BASE, cached_download, mirrored

__all__ = [
    'GlobalLocalFilter', 'GnConv', 'HorBlock', 'HorNet', 'HORNET_ARCHS', 'checkpoint_filter_fn',
    'layer_id', 'resize_complex_weight', 'run_stage', 'set_dft_filter', 'CheckpointMismatchError',
    'check_state_dict', 'unwrap_checkpoint', 'global_filter', 'HorNetFeatures', 'depthwise_conv2d',
    'linear_post', 'compile_blocks',
]

FilterSize = tuple[int, int]


def resize_complex_weight(weight: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a GF filter ``(C, h, w, 2)`` to ``(C, size[0], size[1], 2)``.

    Real and imaginary parts are resized independently with bilinear interpolation,
    ``align_corners=True``; that is what lets a GF model run at any input size.
    """
    size = tuple(int(s) for s in size)
    if tuple(weight.shape[1:3]) == size:
        return weight
    dtype = weight.dtype
    w = weight.float().permute(3, 0, 1, 2)  # (2, C, h, w): real/imag act as the batch
    w = F.interpolate(w, size=size, mode='bilinear', align_corners=True)
    return w.permute(1, 2, 3, 0).to(dtype)


def _dft_mats(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin DFT matrices ``M[k, t] = cos|sin(2*pi*k*t/n)`` in float64, for exactness."""
    idx = torch.arange(n, device=device, dtype=torch.float64)
    ang = 2 * math.pi * torch.outer(idx, idx).remainder(n) / n
    return torch.cos(ang), torch.sin(ang)


def _global_filter_dft(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``irfft2(rfft2(x) * weight)`` (orthonormal) written as real matrix products.

    Numerically equal to the FFT path; used where FFT ops cannot be exported (ONNX).
    ``x``: (B, C, H, W) float32, ``weight``: (C, H, W//2 + 1, 2) float32.
    """
    H, W = x.shape[-2:]
    wf = W // 2 + 1
    ch, sh = _dft_mats(H, x.device)
    cw, sw = _dft_mats(W, x.device)
    cw, sw = cw[:, :wf], sw[:, :wf]  # (W, wf)
    # inverse real DFT along W counts each non-self-conjugate frequency twice
    c = torch.full((wf,), 2.0, dtype=torch.float64, device=x.device)
    c[0] = 1.0
    if W % 2 == 0:
        c[-1] = 1.0
    scale = 1.0 / math.sqrt(H * W)
    ch, sh = ch.float(), sh.float()
    cw_f, sw_f = (cw * scale).float(), (sw * scale).float()
    cw_i, sw_i = (cw * c * scale).t().float(), (sw * c * scale).t().float()  # (wf, W)
    # forward: real DFT along W, complex DFT along H
    ar, ai = x @ cw_f, -(x @ sw_f)
    br, bi = ch @ ar + sh @ ai, ch @ ai - sh @ ar
    # filter
    wr, wi = weight[..., 0], weight[..., 1]
    yr, yi = br * wr - bi * wi, br * wi + bi * wr
    # inverse: complex DFT along H, real inverse DFT along W
    dr, di = ch @ yr - sh @ yi, ch @ yi + sh @ yr
    return dr @ cw_i - di @ sw_i


def _no_torchscript(self):
    # torch.jit.script is deprecated in torch 2.x; say so instead of failing deep inside the compiler
    raise RuntimeError(
        f'{type(self).__name__} does not support TorchScript (torch.jit.script is deprecated in torch 2.x). '
        'Use torch.compile, torch.export or export.py (ONNX / torch.export) instead.')


def _cpu_eager(x) -> bool:
    """Whether ``x`` is a real CPU tensor in plain eager mode, where this file's hand-written CPU
    paths run: not an FX proxy, not under torch.compile, not under a dispatch mode (e.g. the FLOP
    counter), which see plain aten ops."""
    return (isinstance(x, torch.Tensor) and x.device.type == 'cpu' and not torch.compiler.is_compiling()
            and not is_in_torch_dispatch_mode())


def _complex_mul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x * complex(weight[..., 0], weight[..., 1])`` for complex ``x`` in real arithmetic, so that
    inductor generates a kernel for it instead of falling back to an eager complex op."""
    xr = torch.view_as_real(x)
    a, b = xr[..., 0], xr[..., 1]
    c, d = weight[..., 0], weight[..., 1]
    return torch.view_as_complex(torch.stack((a * c - b * d, a * d + b * c), dim=-1))


# The global filter ``irfft2(rfft2(x) * w)`` (orthonormal, float32 ``x``, ``w`` a contiguous real view
# ``(C, H, W // 2 + 1, 2)`` of the complex filter) as two custom ops with a hand-written backward.
#
# The filter is a linear map of ``x``, a real circular convolution, so its transpose is the same
# filter with the conjugate spectrum: ``grad_x = irfft2(rfft2(g) * conj(w))``. The filter gradient
# is ``sum_b rfft2(g) * conj(rfft2(x))``, with the frequency columns that ``irfft2`` counts twice
# (all but the zero and, for even ``W``, the Nyquist column) doubled. One forward FFT pair per pass
# instead of autograd's, whose ``rfft2`` backward pads the half spectrum and runs a full complex FFT
# (HorNet-T stage 2, batch 8: fwd+bwd 5.9 -> 3.4 ms per filter). Equal to autograd's gradients to
# float rounding (tests/test_models.py).
#
# Custom ops, not an autograd.Function, so that torch.compile keeps them whole: the graph holds two
# opaque real-valued ops instead of complex FFT and product nodes, which inductor cannot generate
# code for (it falls back op by op and warns), and the compiled backward is this one.

@torch.library.custom_op('hornet::global_filter', mutates_args=())
def _global_filter_op(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the filtered ``x`` and ``rfft2(x)`` as a real view (saved for the backward)."""
    spec = torch.fft.rfft2(x, dim=(-2, -1), norm='ortho')
    y = torch.fft.irfft2(spec * torch.view_as_complex(weight), s=x.shape[-2:], dim=(-2, -1), norm='ortho')
    return y, torch.view_as_real(spec)


@_global_filter_op.register_fake
def _(x, weight):
    # the FFTs return dense tensors whatever the input's strides
    return x.new_empty(x.shape), x.new_empty((*x.shape[:-1], x.shape[-1] // 2 + 1, 2))


# conj_physical, not conj: a product with a lazily conjugated view came out unconjugated when
# the op ran inside a compiled graph (torch 2.14, aot_eager and inductor; tests/test_models.py)
@torch.library.custom_op('hornet::global_filter_backward', mutates_args=())
def _global_filter_backward_op(grad: torch.Tensor, spec: torch.Tensor, weight: torch.Tensor, need_x: bool,
                               need_weight: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients for ``x`` and ``weight`` (an empty tensor for the one not needed)."""
    H, W = grad.shape[-2:]
    grad_spec = torch.fft.rfft2(grad, dim=(-2, -1), norm='ortho')
    grad_x, grad_w = grad.new_empty(0), weight.new_empty(0)
    if need_x:
        grad_x = torch.fft.irfft2(grad_spec * torch.view_as_complex(weight).conj_physical(), s=(H, W),
                                  dim=(-2, -1), norm='ortho')
    if need_weight:
        grad_w = (grad_spec * torch.view_as_complex(spec).conj_physical()).sum(0)
        grad_w[..., 1:(W + 1) // 2] *= 2
        grad_w = torch.view_as_real(grad_w)
    return grad_x, grad_w


@_global_filter_backward_op.register_fake
def _(grad, spec, weight, need_x, need_weight):
    return (grad.new_empty(grad.shape) if need_x else grad.new_empty(0),
            weight.new_empty(weight.shape) if need_weight else weight.new_empty(0))


def _global_filter_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], inputs[1])


def _global_filter_grad(ctx, grad, _grad_spec):
    spec, weight = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad
    grad_x, grad_w = _global_filter_backward_op(grad, spec, weight, need_x, need_w)
    return grad_x if need_x else None, grad_w if need_w else None


_global_filter_op.register_autograd(_global_filter_grad, setup_context=_global_filter_setup)


def _use_global_filter_op(x) -> bool:
    """Whether :func:`global_filter` runs the custom ops: in eager mode and under torch.compile, but
    not under torch.export (its programs keep plain ``torch.fft`` ops, loadable without this file),
    FX proxies or dispatch modes (the FLOP counter counts the FFT ops)."""
    if torch.compiler.is_compiling():
        return not torch.compiler.is_exporting()
    return isinstance(x, torch.Tensor) and not is_in_torch_dispatch_mode()


@register_notrace_function
def global_filter(x: torch.Tensor, weight: torch.Tensor, use_dft: bool = False) -> torch.Tensor:
    """``irfft2(rfft2(x) * weight)`` over the last two axes (orthonormal), computed in float32.

    ``weight`` is a real ``(C, h, w, 2)`` filter, resized to ``(H, W // 2 + 1)`` when it differs.
    Autocast is off inside (the FFT stays float32); the result has ``x``'s dtype. A leaf for FX
    tracing (``torch.fx.wrap`` below and timm's notrace registry): it reads shapes and enters autocast.
    """
    dtype = x.dtype
    H, W = x.shape[-2:]
    device_type = x.device.type
    no_autocast = torch.autocast(device_type, enabled=False) \
        if torch.amp.is_autocast_available(device_type) else contextlib.nullcontext()
    with no_autocast:
        x = x.float()
        weight = resize_complex_weight(weight.float(), (H, W // 2 + 1))
        if use_dft:
            x = _global_filter_dft(x, weight)
        elif _use_global_filter_op(x):
            x = _global_filter_op(x, weight.contiguous())[0]
        else:
            x = torch.fft.rfft2(x, dim=(-2, -1), norm='ortho')
            x = _complex_mul(x, weight)
            x = torch.fft.irfft2(x, s=(H, W), dim=(-2, -1), norm='ortho')
    return x.to(dtype)


torch.fx.wrap('global_filter')


class _DepthwiseConvFn(torch.autograd.Function):
    """Depthwise "same" convolution (stride 1, odd kernel, padding ``(k - 1) // 2``) whose backward
    runs as two *forward* depthwise convolutions.

    Why: on CPU, oneDNN's depthwise backward, the weight gradient above all, runs far below its
    forward kernel (HorNet-T 7x7, batch 8, 2 threads: 27 / 15 / 8.8 / 22 ms per block for stages
    0-3 against 0.3-2.8 ms forward); it was 18% of a training step. Here:

    - input gradient: the same conv of the output gradient with the kernel flipped;
    - weight gradient: ``dW[c, i, j] = sum_{b,h,w} x[b, c, h+i-p, w+j-p] * g[b, c, h, w]``, one
      depthwise conv over the ``B * C`` maps of ``x`` with the maps of ``g`` as ``H x W``
      kernels (zero padding ``p`` gives exactly the ``k x k`` output), then a sum over the batch.

    Same numbers as autograd's backward up to float rounding (tests/test_models.py).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=padding, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        C = weight.shape[0]
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(-1, -2), None, padding=ctx.padding, groups=C)
        if ctx.needs_input_grad[1]:
            B, _, H, W = x.shape
            grad_w = F.conv2d(x.reshape(1, B * C, H, W), grad.reshape(B * C, 1, H, W),
                              padding=ctx.padding, groups=B * C)
            grad_w = grad_w.view(B, C, *weight.shape[-2:]).sum(0, dtype=torch.float32)
            grad_w = grad_w.unsqueeze(1).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


@register_notrace_function
def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     padding: tuple[int, int]) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding, groups=C)`` for a depthwise ``(C, 1, kh, kw)``
    kernel; on CPU, for "same" kernels of 5 or more and when a gradient is needed, through
    :class:`_DepthwiseConvFn` (a backward several times faster). Under autocast the inputs take the
    autocast dtype first, as ``F.conv2d`` would. A leaf for FX tracing."""
    kh, kw = weight.shape[-2:]
    fast = (x.device.type == 'cpu' and torch.is_grad_enabled() and max(kh, kw) >= 5
            and tuple(padding) == ((kh - 1) // 2, (kw - 1) // 2) and kh % 2 == 1 and kw % 2 == 1
            and (x.requires_grad or weight.requires_grad))
    if not fast:
        return F.conv2d(x, weight, bias, padding=padding, groups=weight.shape[0])
    if torch.is_autocast_enabled('cpu'):
        dtype = torch.get_autocast_dtype('cpu')
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
        with torch.autocast('cpu', enabled=False):
            return _DepthwiseConvFn.apply(x, weight, bias, tuple(padding))
    return _DepthwiseConvFn.apply(x, weight, bias, tuple(padding))


torch.fx.wrap('depthwise_conv2d')

try:  # oneDNN's matmul with fused post-ops, the kernel inductor uses for CPU inference
    _MKLDNN_LINEAR = torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
except (AttributeError, RuntimeError):
    _MKLDNN_LINEAR = None


def _fused_linear_dtype(x, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype to run :func:`linear_post` in on oneDNN, or None to run plain ops.

    Only on CPU in eager mode: torch.compile fuses on its own, FX proxies and dispatch modes (e.g.
    the FLOP counter) see plain aten ops.
    """
    if _MKLDNN_LINEAR is None or not torch.backends.mkldnn.enabled or not _cpu_eager(x):
        return None
    if torch.is_autocast_enabled('cpu'):
        dtype = torch.get_autocast_dtype('cpu')
    elif x.dtype == weight.dtype:
        dtype = x.dtype
    else:
        return None
    if dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return dtype
    return None


# Below these many multiply-adds per product plain ops are faster than oneDNN: its primitive lookup
# and this file's checks cost ~50 us a call. float32 inference: fused 0.2-0.6x of plain up to 2**22
# MACs, even around 2**24, 1.1-1.5x from 2**26 (2 threads; HorNet-T batch 1 at 64 px 1.19x, 224 px
# batch 8 unchanged). bf16 inference keeps every product fused: the threshold cost 2-4% at 224 px.
# Training: the autograd Function's fixed cost (~0.1 ms) made 0.03-13 M MAC products 0.35-0.9x.
_ONEDNN_INFER_MIN_MACS = 2 ** 24
_ONEDNN_TRAIN_MIN_MACS = 2 ** 26


class _OneDNNLinearFn(torch.autograd.Function):
    """``x @ weight.T + bias (+ other)`` for CPU training, its forward and its input gradient on
    oneDNN's matmul instead of MKL's sgemm (``F.linear``'s path); the weight gradient stays ``torch.mm``.

    Why: for HorNet's shapes oneDNN's forward runs 5-25% faster (HorNet-T, 2 threads: 1568x256 @
    256x1024, 150 vs 185-198 GFLOP/s; 392x512 @ 512x2048, 149 vs 181-191), the bias comes in without
    addmm's copy of it into the output, and the residual add (``other``) rides along. The input
    gradient ``grad @ weight`` is oneDNN's linear with ``weight.t()`` as a strided view (no copy):
    1.1-1.8x sgemm's speed in float32 (25088x256 @ 256x64: 145 vs 78 GFLOP/s; 1568x256 @ 256x1024:
    176 vs 123). For the weight gradient sgemm was as fast or faster (measured).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, other):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if other is not None:
            return _MKLDNN_LINEAR.binary(x, other, weight, bias, 'add')
        return _MKLDNN_LINEAR(x, weight, bias, 'none', [], '')

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        g2 = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[0]:
            # float32: oneDNN takes the transposed weight as a strided view (no copy) and runs
            # 1.1-1.8x faster than sgemm here; bf16 mm already is oneDNN
            if grad.dtype == torch.float32:
                grad_x = _MKLDNN_LINEAR(g2, weight.t(), None, 'none', [], '')
            else:
                grad_x = g2.mm(weight)
            grad_x = grad_x.view(*grad.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            grad_w = g2.t().mm(x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b, grad if ctx.needs_input_grad[3] else None


def _apply_post(y: torch.Tensor, post: str, other: torch.Tensor | None) -> torch.Tensor:
    """``post`` of :func:`linear_post` as a separate op on the product ``y``."""
    if post == 'gelu':
        return F.gelu(y)
    if post == 'mul':
        return y * other
    if post == 'add':
        return y + other
    return y


def linear_post(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, post: str = 'none',
                other: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` followed by ``post``: ``'none'``, ``'gelu'`` (exact),
    ``'mul'`` or ``'add'`` with ``other`` (same shape as the result).

    On CPU the product runs on oneDNN (in float32 from ``_ONEDNN_INFER_MIN_MACS`` multiply-adds). For
    inference it is one kernel with the bias and ``post`` fused in: no extra pass over the result
    for the bias (addmm copies it in first), the GELU, the gnConv gate or the residual, each a full
    read and write of a large activation (HorNet-T fp32 inference: 1.2x img/s). For training,
    products of ``_ONEDNN_TRAIN_MIN_MACS`` multiply-adds and more go through
    :class:`_OneDNNLinearFn` (bias and residual fused into the forward; the GELU and the gate
    product stay separate ops, their backward needs the product's output).
    Under bf16 autocast the operands are cast as autocast would; an ``'add'`` whose ``other`` has
    another dtype keeps the plain ops, so a float32 sum stays float32. Elsewhere (CUDA,
    torch.compile, FX, dispatch modes) plain ops.
    """
    dtype = _fused_linear_dtype(x, weight)  # None for FX proxies, under torch.compile, ...
    macs = x.numel() * weight.shape[0] if dtype is not None else 0
    min_macs = _ONEDNN_INFER_MIN_MACS if dtype == torch.float32 else 0
    if dtype is not None and macs >= min_macs and not (post == 'add' and other.dtype != dtype):
        grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                            or (bias is not None and bias.requires_grad)
                                            or (other is not None and other.requires_grad))
        if not grad or macs >= _ONEDNN_TRAIN_MIN_MACS:
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
            other = other.to(dtype) if post in ('mul', 'add') else None
            # the operands already have the autocast dtype; entering a context costs ~4 us, so only
            # when autocast is on
            autocast_on = torch.is_autocast_enabled('cpu')
            with torch.autocast('cpu', enabled=False) if autocast_on else contextlib.nullcontext():
                if not grad:
                    if post in ('mul', 'add'):
                        return _MKLDNN_LINEAR.binary(x, other, weight, bias, post)
                    return _MKLDNN_LINEAR(x, weight, bias, post, [], 'none' if post == 'gelu' else '')
                y = _OneDNNLinearFn.apply(x, weight, bias, other if post == 'add' else None)
                return y if post == 'add' else _apply_post(y, post, other)  # the add is fused in
    return _apply_post(F.linear(x, weight, bias), post, other)


class GlobalLocalFilter(nn.Module):
    """Global-local filter, the GF spatial mixer of HorNet's last two stages.

    Half of the channels go through a depthwise 3x3 conv (local), the other half through a learned
    filter in the 2-D Fourier domain (global); the halves are interleaved channel by channel.

    Args:
        dim: Number of input (= output) channels; must be even.
        h: Filter height (frequency rows).
        w: Filter width (frequency columns, ``W // 2 + 1`` of the feature map it was made for).
    """
    __prepare_scriptable__ = _no_torchscript

    def __init__(self, dim: int, h: int = 14, w: int = 8, device=None, dtype=None):
        super().__init__()
        if dim % 2:
            raise ValueError(f'GlobalLocalFilter needs an even channel count, got {dim}')
        dd = dict(device=device, dtype=dtype)
        self.dw = nn.Conv2d(dim // 2, dim // 2, kernel_size=3, padding=1, bias=False, groups=dim // 2, **dd)
        self.complex_weight = nn.Parameter(torch.empty(dim // 2, h, w, 2, **dd))
        trunc_normal_(self.complex_weight, std=.02)
        self.pre_norm = LayerNorm2d(dim, eps=1e-6, **dd)
        self.post_norm = LayerNorm2d(dim, eps=1e-6, **dd)
        # Real-matrix DFT instead of torch.fft: for export (ONNX has no FFT). See set_dft_filter().
        self.use_dft = False

    def global_filter(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the learned frequency filter to ``x`` in float32; returns x's dtype."""
        return global_filter(x, self.complex_weight, self.use_dft)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """``post_norm(interleave(dw(x_local), global_filter(x_global))) * scale`` (the scale is
        folded into the post-norm's affine, one pass fewer over the largest gnConv tensor)."""
        c = self.dw.in_channels
        # split, not two slices: the backward of a slice zero-fills a full-size gradient first
        x_local, x_global = torch.split(self.pre_norm(x), c, dim=1)
        x_local = self.dw(x_local)
        # dense NCHW for the FFT: over a channels-last slice (channels innermost) it runs ~1.7x slower
        x_global = self.global_filter(x_global.contiguous()).to(x_local.dtype)
        # interleave: channel 2k is local channel k, 2k+1 is global channel k; built channels-last
        # (B, H, W, C, 2) so the NCHW view of the result is channels_last, like the rest of the net
        x = torch.stack((x_local.permute(0, 2, 3, 1), x_global.permute(0, 2, 3, 1)), dim=-1).flatten(-2)
        n = self.post_norm
        weight, bias = (n.weight, n.bias) if scale == 1.0 else (n.weight * scale, n.bias * scale)
        return F.layer_norm(x, n.normalized_shape, weight, bias, n.eps).permute(0, 3, 1, 2)


MixerSpec = str | Callable[[int], nn.Module]


class GnConv(nn.Module):
    """Recursive gated convolution (gnConv), a plug-and-play spatial-mixing layer.

    ``proj_in`` maps the input to ``2 * dim`` channels, split into ``p`` (``d_0`` channels) and
    ``q`` (``d_0 + ... + d_{n-1}``); ``q`` is spatially mixed, scaled and split into gates
    ``g_k``; then ``y = p * g_0`` and ``y = pws[k-1](y) * g_k`` for ``k = 1..n-1``, with
    ``d_k = dim / 2 ** (n - 1 - k)``. ``proj_out`` maps the result to ``out_dim``.

    Args:
        dim: Width ``C`` of the recursion (``d_{n-1}``); must be divisible by ``2 ** (order - 1)``.
        order: Interaction order ``n`` (>= 1).
        scale: Multiplier ``s`` applied to the mixed gates (HorNet uses 1/3).
        mixer: Spatial mixer over ``sum(d)`` channels: ``'dwconv'`` (depthwise
            ``kernel_size`` x ``kernel_size`` conv with bias), ``'gf'`` (:class:`GlobalLocalFilter`
            with ``filter_size``), or a callable ``channels -> nn.Module``.
        kernel_size: Kernel of the ``'dwconv'`` mixer.
        filter_size: ``(h, w)`` of the ``'gf'`` mixer's frequency filter.
        in_dim: Input width (default ``dim``).
        out_dim: Output width (default ``dim``).
        proj_out: If False, no output projection (then ``out_dim`` must equal ``dim``).

    Example:
        >>> from models import GnConv
        >>> layer = GnConv(64, order=3, mixer='dwconv', kernel_size=7)
        >>> layer(torch.randn(2, 64, 28, 28)).shape
        torch.Size([2, 64, 28, 28])
    """

    __prepare_scriptable__ = _no_torchscript

    def __init__(
            self,
            dim: int,
            order: int = 5,
            scale: float = 1.0,
            mixer: MixerSpec = 'dwconv',
            kernel_size: int = 7,
            filter_size: FilterSize = (14, 8),
            in_dim: int | None = None,
            out_dim: int | None = None,
            proj_out: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if order < 1:
            raise ValueError(f'gnConv order must be >= 1, got {order}')
        if dim % (2 ** (order - 1)):
            raise ValueError(f'gnConv width {dim} is not divisible by 2**(order-1) = {2 ** (order - 1)}')
        dd = dict(device=device, dtype=dtype)
        in_dim = dim if in_dim is None else in_dim
        out_dim = dim if out_dim is None else out_dim
        if not proj_out and out_dim != dim:
            raise ValueError(f'out_dim={out_dim} differs from dim={dim}, which needs proj_out=True')
        self.order = order
        self.dims = [dim // 2 ** i for i in range(order)][::-1]
        self.scale = scale
        self.proj_in = nn.Conv2d(in_dim, 2 * dim, kernel_size=1, **dd)
        mix_dim = sum(self.dims)
        self.mixer = mixer if isinstance(mixer, str) else 'custom'
        if mixer == 'dwconv':
            self.dwconv = nn.Conv2d(
                mix_dim, mix_dim, kernel_size, padding=(kernel_size - 1) // 2, groups=mix_dim, **dd)
        elif mixer == 'gf':
            self.dwconv = GlobalLocalFilter(mix_dim, h=filter_size[0], w=filter_size[1], **dd)
        elif callable(mixer):
            self.dwconv = mixer(mix_dim)
        else:
            raise ValueError(f"unknown gnConv mixer {mixer!r}; use 'dwconv', 'gf' or a callable")
        self.proj_out = nn.Conv2d(dim, out_dim, kernel_size=1, **dd) if proj_out else nn.Identity()
        self.pws = nn.ModuleList(
            nn.Conv2d(self.dims[i], self.dims[i + 1], kernel_size=1, **dd) for i in range(order - 1))

    def _mix(self, q: torch.Tensor) -> torch.Tensor:
        """``dwconv(q) * scale`` on an NCHW tensor, the scale folded into the mixer's last affine map."""
        if self.mixer == 'dwconv':
            m = self.dwconv
            weight, bias = (m.weight, m.bias) if self.scale == 1.0 else (m.weight * self.scale, m.bias * self.scale)
            return depthwise_conv2d(q, weight, bias, m.padding)
        if self.mixer == 'gf':
            return self.dwconv(q, scale=self.scale)
        return self.dwconv(q) * self.scale

    def forward(self, x: torch.Tensor, out_scale: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """gnConv of an NCHW ``x``; ``out_scale`` (per output channel) multiplies the result, folded
        into ``proj_out`` (HorBlock passes its layer scale ``gamma1``); ``residual`` (NCHW, the
        shape of the result) is added to it, in the same kernel as ``proj_out`` for CPU inference.

        Speed: the 1x1 convs run as matrix products on the channels-last view (B, H, W, C), free
        for a channels_last ``x`` (as inside HorNet): no layout copies, and no fall-back to torch's
        slow 1x1-conv path, which CPU convolution takes for small batches on one thread. For CPU
        inference each gate product is fused into its matrix product (:func:`linear_post`).
        """
        x = x.permute(0, 2, 3, 1)
        w, b = self.proj_in.weight.flatten(1), self.proj_in.bias
        d0 = self.dims[0]
        # q first, p in its own product: both come out dense (a channel slice of a channels-last
        # tensor is strided, and the depthwise conv would copy it), and p's product takes the gate
        q = linear_post(x, w[d0:], b[d0:]).permute(0, 3, 1, 2)
        gates = torch.split(self._mix(q).permute(0, 2, 3, 1), self.dims, dim=-1)
        y = linear_post(x, w[:d0], b[:d0], 'mul', gates[0])
        for i in range(self.order - 1):  # indexed, not zipped: FX-traceable
            pw = self.pws[i]
            y = linear_post(y, pw.weight.flatten(1), pw.bias, 'mul', gates[i + 1])
        po = self.proj_out
        res = residual.permute(0, 2, 3, 1) if residual is not None else None
        if isinstance(po, nn.Conv2d):
            weight, bias = po.weight.flatten(1), po.bias
            if out_scale is not None:
                weight, bias = weight * out_scale[:, None], bias * out_scale
            y = linear_post(y, weight, bias, 'add', res) if res is not None else linear_post(y, weight, bias)
        else:
            if out_scale is not None:
                y = y * out_scale
            if res is not None:
                y = y + res
        return y.permute(0, 3, 1, 2)


class HorBlock(nn.Module):
    """HorNet block: gnConv spatial mixing, then a channels-last MLP, each residual with layer scale.

    Args:
        dim: Block width.
        drop_path: Stochastic depth rate.
        layer_scale_init_value: Initial layer scale; <= 0 disables layer scale (no parameters).
        mlp_ratio: Hidden width of the MLP relative to ``dim``.
        **gnconv_kwargs: Passed to :class:`GnConv` (order, scale, mixer, filter_size, ...).
    """

    __prepare_scriptable__ = _no_torchscript

    def __init__(
            self,
            dim: int,
            drop_path: float = 0.,
            layer_scale_init_value: float = 1e-6,
            mlp_ratio: float = 4.,
            device=None,
            dtype=None,
            **gnconv_kwargs,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = LayerNorm2d(dim, eps=1e-6, **dd)
        self.gnconv = GnConv(dim, **gnconv_kwargs, **dd)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        hidden = int(mlp_ratio * dim)
        self.pwconv1 = nn.Linear(dim, hidden, **dd)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(hidden, dim, **dd)
        if layer_scale_init_value > 0:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value), **dd))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value), **dd))
        else:
            self.gamma1 = self.gamma2 = None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # layer scales are folded into the last linear map of each branch (one pass fewer each);
        # without stochastic depth the residual adds go into those maps too (fused for CPU inference)
        skip = isinstance(self.drop_path, nn.Identity) or not self.training
        if skip:
            x = self.gnconv(self.norm1(x), out_scale=self.gamma1, residual=x)
        else:
            x = x + self.drop_path(self.gnconv(self.norm1(x), out_scale=self.gamma1))
        # MLP channels-last; on a channels_last x the permutes are free views
        x_cl = x.permute(0, 2, 3, 1)
        y = self.norm2(x_cl)
        if isinstance(self.act, nn.GELU) and self.act.approximate == 'none':
            y = linear_post(y, self.pwconv1.weight, self.pwconv1.bias, 'gelu')
        else:
            y = self.act(self.pwconv1(y))
        w2, b2 = self.pwconv2.weight, self.pwconv2.bias
        if self.gamma2 is not None:
            w2, b2 = w2 * self.gamma2[:, None], b2 * self.gamma2
        if skip:
            return linear_post(y, w2, b2, 'add', x_cl).permute(0, 3, 1, 2)
        return x + self.drop_path(linear_post(y, w2, b2).permute(0, 3, 1, 2))


def run_stage(downsample: nn.Module, blocks: nn.Sequential, x: torch.Tensor,
              grad_checkpointing: bool = False) -> torch.Tensor:
    """One HorNet stage: its downsample layer, then its blocks (each recomputed in the backward
    pass when ``grad_checkpointing``, which trades compute for activation memory)."""
    # channels_last throughout: LayerNorm2d's permutes become free views and the convs take
    # oneDNN's NHWC path (a no-op when x already is channels_last)
    x = downsample(x.contiguous(memory_format=torch.channels_last))
    if grad_checkpointing and x.requires_grad and not torch.jit.is_scripting():
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x
    return blocks(x)


# Variant definitions: plain data. ``gf_sizes[i]`` is the GF filter (h, w) of stage i, None = 7x7 dwconv.
_GF_224 = (None, None, (14, 8), (7, 4))
_GF_384 = (None, None, (24, 13), (12, 7))
_NO_GF = (None, None, None, None)
HORNET_ARCHS: dict[str, dict] = {
    f'{size}_{kind}': dict(depths=(2, 3, 18, 2), base_dim=base_dim, gf_sizes=gf)
    for size, base_dim in (('tiny', 64), ('small', 96), ('base', 128), ('large', 192))
    for kind, gf in (('7x7', _NO_GF), ('gf', _GF_224), ('gf_img384', _GF_384))
}


class HorNet(nn.Module):
    """HorNet image classifier (and, via ``forward_intermediates``, a 4-stage feature pyramid).

    Args:
        in_chans: Input image channels.
        num_classes: Classifier outputs; 0 for no classifier.
        depths: Blocks per stage.
        base_dim: Width of stage 0; stage i has ``base_dim * 2**i`` channels.
        orders: gnConv order per stage.
        scale: gnConv gate scale ``s``.
        gf_sizes: Per stage, the GlobalLocalFilter size ``(h, w)``, or None for a depthwise
            ``kernel_size`` conv.
        kernel_size: Kernel of the depthwise-conv mixer.
        mlp_ratio: MLP expansion in each block.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, rising linearly over all blocks up to this rate.
        layer_scale_init_value: Initial layer scale; <= 0 disables it.
        head_init_scale: Multiplier for the initial classifier weight and bias.
        uniform_init: Xavier-uniform conv/linear init instead of truncated normal.
        global_pool: ``'avg'``, or ``''`` for no pooling in ``forward_head``.
        device: Device to create the parameters on (e.g. ``'meta'``), as every timm model.
        dtype: Parameter dtype.
    """
    __prepare_scriptable__ = _no_torchscript

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            depths: Sequence[int] = (2, 3, 18, 2),
            base_dim: int = 64,
            orders: Sequence[int] = (2, 3, 4, 5),
            scale: float = 1 / 3,
            gf_sizes: Sequence[FilterSize | None] = _NO_GF,
            kernel_size: int = 7,
            mlp_ratio: float = 4.,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            layer_scale_init_value: float = 1e-6,
            head_init_scale: float = 1.,
            uniform_init: bool = False,
            global_pool: str = 'avg',
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if not (len(depths) == len(orders) == len(gf_sizes) == 4):
            raise ValueError('depths, orders and gf_sizes need one entry per stage (4)')
        if global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.depths = tuple(depths)
        self.grad_checkpointing = False
        dims = [base_dim * 2 ** i for i in range(4)]

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4, **dd),
            LayerNorm2d(dims[0], eps=1e-6, **dd),
        ))
        for i in range(1, 4):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(dims[i - 1], eps=1e-6, **dd),
                nn.Conv2d(dims[i - 1], dims[i], kernel_size=2, stride=2, **dd),
            ))

        dp_rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        self.feature_info = []
        cur = 0
        for i in range(4):
            mixer = dict(mixer='dwconv', kernel_size=kernel_size) if gf_sizes[i] is None \
                else dict(mixer='gf', filter_size=tuple(gf_sizes[i]))
            self.stages.append(nn.Sequential(*[
                HorBlock(
                    dims[i], drop_path=dp_rates[cur + j], layer_scale_init_value=layer_scale_init_value,
                    mlp_ratio=mlp_ratio, order=orders[i], scale=scale, **mixer, **dd)
                for j in range(depths[i])
            ]))
            cur += depths[i]
            self.feature_info.append(dict(num_chs=dims[i], reduction=2 ** (i + 2), module=f'stages.{i}'))

        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes, **dd) if num_classes > 0 else nn.Identity()

        self.apply(self._init_xavier if uniform_init else self._init_trunc_normal)
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    @staticmethod
    def _init_trunc_normal(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @staticmethod
    def _init_xavier(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # 1-D parameters (norms, biases, layer scales) are excluded by the optimizer factory;
        # the GF filters are full tensors and keep weight decay, as in the original training.
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """Parameter name -> layer-decay id for timm (``group_with_matcher`` takes a callable):
        :func:`layer_id`'s ``layer_wise`` rule with 12 layers, or ``stage_wise`` when ``coarse``."""
        decay_type = 'stage_wise' if coarse else 'layer_wise'
        return lambda name: layer_id(name, num_layers=12, decay_type=decay_type)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes, **get_device_dtype(self)) \
            if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            self._init_trunc_normal(self.head)
        self.head.train(self.training)  # a new head follows the model's train/eval mode

    def _run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return run_stage(self.downsample_layers[i], self.stages[i], x, self.grad_checkpointing)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward that also returns raw stage outputs (strides 4, 8, 16, 32).

        Args:
            x: Input images.
            indices: Take the last n stages if int, all if None, else these stage indices.
            norm: Unused (HorNet's final norm acts on pooled features), kept for timm's API.
            stop_early: Stop after the last requested stage.
            output_fmt: Only ``'NCHW'``.
            intermediates_only: Return only the list of stage outputs.
        """
        if output_fmt != 'NCHW':
            raise ValueError('HorNet intermediates are NCHW only')
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = max_index if stop_early or intermediates_only else len(self.stages) - 1
        intermediates = []
        for i in range(last + 1):
            x = self._run_stage(i, x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop stages after the last requested one (and the head) for feature extraction.

        HorNet's final ``norm`` acts on pooled features, i.e. it belongs to the head: it goes with
        the head (``prune_head``) as well as with ``prune_norm``, so no parameter is left unused.
        """
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        self.downsample_layers = self.downsample_layers[:max_index + 1]
        if prune_norm or prune_head or max_index < 3:
            self.norm = nn.Identity()
        if prune_head or max_index < 3:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features of the last stage, (B, C3, H/32, W/32)."""
        for i in range(len(self.stages)):
            x = self._run_stage(i, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = self.norm(x.mean((-2, -1)))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def layer_id(name: str, num_layers: int = 12, decay_type: str = 'layer_wise') -> int:
    """Layer-decay id of a HorNet trunk parameter: the one rule of the original release.

    ``name`` is relative to the trunk (``downsample_layers.*``, ``stages.*``, ``norm.*``,
    ``head.*``); a dense model strips its ``backbone.`` prefix first and gives every parameter
    outside the backbone the top id ``num_layers + 1``. The lr scale is
    ``decay_rate ** (num_layers + 1 - id)``, never clamped.

    ``layer_wise``: ``downsample_layers.k`` -> 0, 2, 3, 12 for k = 0..3; ``stages.0`` -> 1,
    ``stages.1`` -> 2, ``stages.2.b`` -> min(3 + b // 2, 11), ``stages.3`` -> 12; any other name
    -> ``num_layers + 1``. The constants 11 and 12 are fixed (they do not follow ``num_layers``),
    so with ``num_layers`` < 11 late stage-2 blocks, ``downsample_layers.3`` and ``stages.3``
    get ids above the top one and lr scales above 1, exactly as the original runs did.

    ``stage_wise``: every ``downsample_layers.k`` -> 0, ``stages.s`` -> s + 1, any other name
    -> ``num_layers + 1``.

    The classifier uses ``num_layers=12`` (ids 0..13; ``head`` and ``norm`` -> 13).
    """
    top = num_layers + 1
    parts = name.split('.')
    if decay_type == 'layer_wise':
        if parts[0] in ('cls_token', 'mask_token', 'pos_embed'):
            return 0
        if parts[0] == 'downsample_layers':
            return (0, 2, 3, 12)[int(parts[1])]
        if parts[0] == 'stages':
            stage = int(parts[1])
            if stage == 2:
                return min(3 + int(parts[2]) // 2, 11)
            return (1, 2, None, 12)[stage]
        return top
    if decay_type == 'stage_wise':
        if parts[0] == 'downsample_layers':
            return 0
        if parts[0] == 'stages':
            return int(parts[1]) + 1
        return top
    raise ValueError(f"decay_type must be 'layer_wise' or 'stage_wise', got {decay_type!r}")


def set_dft_filter(model: nn.Module, enable: bool = True) -> nn.Module:
    """Make every GlobalLocalFilter in ``model`` use real DFT matrix products instead of torch.fft
    (same numbers; exportable to ONNX)."""
    for m in model.modules():
        if isinstance(m, GlobalLocalFilter):
            m.use_dft = enable
    return model


# Compiled graphs per compiled block kind: one per stage width (4) for each of training and evaluation,
# for each batch size (training, evaluation, the last smaller batches), with margin
_BLOCK_RECOMPILE_LIMIT = 64


def compile_blocks(model: nn.Module, block_types: tuple[type[nn.Module], ...] = (HorBlock,),
                   **compile_kwargs) -> nn.Module:
    """Regional compilation: ``torch.compile`` every :class:`HorBlock` of ``model`` (every module of
    ``block_types``) in place (``nn.Module.compile``), with ``fullgraph=True`` and static shapes
    unless ``compile_kwargs`` say otherwise; stems, downsampling layers and the head stay eager.

    Blocks of one width share their compiled graph, so the compiler traces, lowers and builds each
    block kind once instead of all 25 (HorNet-T) of a whole-model graph: HorNet-T GF training on a
    2-core CPU compiles in 54 s instead of 121 s, at the same step time (benchmarks/throughput.py
    ``--compile blocks``). Parameter names and the state dict stay the same.
    Every compiled module shares one code object (``Module._call_impl``), whose graph count dynamo
    limits (``torch._dynamo.config.recompile_limit``, 8 by default); it is raised to
    ``_BLOCK_RECOMPILE_LIMIT`` so that training and evaluation at a few batch sizes all stay compiled.
    """
    kwargs = dict(fullgraph=True, dynamic=False) | compile_kwargs
    import torch._dynamo
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _BLOCK_RECOMPILE_LIMIT)
    blocks = [m for m in model.modules() if isinstance(m, block_types)]
    if not blocks:
        names = ' or '.join(t.__name__ for t in block_types)
        raise ValueError(f'compile_blocks: {type(model).__name__} has no {names} to compile')
    for m in blocks:
        m.compile(**kwargs)
    return model


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model: lists missing, unexpected and shape-mismatched keys."""


def _describe(keys: list[str], limit: int = 20) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def check_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module, what: str = 'checkpoint') -> None:
    """Raise :class:`CheckpointMismatchError` listing every key that does not fit ``model``."""
    target = model.state_dict()
    missing = [k for k in target if k not in state_dict]
    unexpected = [k for k in state_dict if k not in target]
    mismatched = [f'{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}'
                  for k, v in target.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        lines = [f'{what} does not fit {type(model).__name__}:']
        if missing:
            lines.append(f'  missing keys ({len(missing)}): {_describe(missing)}')
        if unexpected:
            lines.append(f'  unexpected keys ({len(unexpected)}): {_describe(unexpected)}')
        if mismatched:
            lines.append(f'  shape mismatches ({len(mismatched)}): {_describe(mismatched)}')
        raise CheckpointMismatchError('\n'.join(lines))


def unwrap_checkpoint(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint file: its ``model``/``module``/``state_dict`` entry,
    or the dict itself; a DDP ``module.`` prefix is removed."""
    for key in ('model', 'module', 'state_dict'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {(k[7:] if k.startswith('module.') else k): v for k, v in checkpoint.items()}


def _from_mmpretrain(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state_dict.items():
        if k.startswith('backbone.'):
            k = k[len('backbone.'):]
            if k.startswith('norm3.'):
                k = 'norm.' + k[len('norm3.'):]
            elif k.startswith(('norm0.', 'norm1.', 'norm2.')):
                continue  # per-stage output norms of the dense backbone have no classifier twin
        elif k.startswith('head.fc.'):
            k = 'head.' + k[len('head.fc.'):]
        elif k.startswith(('neck.', 'data_preprocessor.')):
            continue
        k = k.replace('.gnconv.projs.', '.gnconv.pws.')
        k = k.replace('.gamma1.weight', '.gamma1').replace('.gamma2.weight', '.gamma2')
        out[k] = v
    return out


_STEM_CONV = 'downsample_layers.0.0'  # the pretrained cfg's `first_conv`


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapt a released or mmpretrain HorNet checkpoint to ``model``.

    Accepts a training checkpoint (``model``/``module`` entry), an mmpretrain checkpoint
    (``state_dict`` entry, ``backbone.``/``head.fc.`` keys) or a bare state dict. Resizes each GF
    ``complex_weight`` to the model's filter size and drops the classifier when its shape differs.
    Raises :class:`CheckpointMismatchError` if anything else does not fit.
    """
    state_dict = unwrap_checkpoint(state_dict)
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = _from_mmpretrain(state_dict)
    target = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        if k.endswith('complex_weight') and k in target and v.shape != target[k].shape:
            v = resize_complex_weight(v, target[k].shape[1:3])
        elif k.startswith('head.') and (k not in target or v.shape != target[k].shape):
            continue  # class count differs (or no classifier): the head starts fresh
        out[k] = v
    head_keys = [k for k in target if k.startswith('head.')]
    check = dict(out)
    if any(k not in out for k in head_keys):
        # a fresh head is expected to be missing; everything else must fit exactly
        check.update({k: target[k] for k in head_keys})
    stem = _STEM_CONV + '.weight'
    if stem in out and stem in target and out[stem].shape[1] != target[stem].shape[1] \
            and out[stem].shape[:1] + out[stem].shape[2:] == target[stem].shape[:1] + target[stem].shape[2:]:
        # another input channel count: timm adapts the stem (pretrained cfg `first_conv`) after this filter
        check[stem] = target[stem]
    check_state_dict(check, model)
    return out


class HorNetFeatures(FeatureGetterNet):
    """timm's ``features_only`` wrapper (``forward_intermediates``) plus ``set_grad_checkpointing``,
    which timm's getter wrapper lacks but its other feature wrappers have."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


def _weights_overlay(variant: str, kwargs: dict) -> dict:
    """The ``pretrained_cfg_overlay`` that makes timm load ``pretrained=True`` weights by our rules:
    a URL source is fetched by :func:`hub.cached_download` (hash always checked, atomic) and handed
    to timm as a local file; a file, state dict or hub source is left to timm; no source is an error."""
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), overlay).to_dict()
    if cfg.get('source') in ('hf-hub', 'local-dir') or any(cfg.get(k) for k in ('file', 'state_dict', 'hf_hub_id')):
        return overlay
    if not cfg.get('url'):
        name = variant + (f'.{cfg["tag"]}' if cfg.get('tag') else '')
        origin = cfg.get('origin_url') or 'the HorNet release, https://github.com/raoyongming/HorNet'
        raise ValueError(
            f'{name}: no mirrored weights to download. Download the released checkpoint '
            f'({origin}) and pass pretrained_cfg_overlay=dict(file=PATH).')
    return {**overlay, 'file': cached_download(mirrored(cfg['url']))}


def _create_hornet(variant: str, pretrained: bool = False, arch: str | None = None, **kwargs) -> HorNet:
    if pretrained:
        kwargs['pretrained_cfg_overlay'] = _weights_overlay(variant, kwargs)
    model_args = dict(HORNET_ARCHS[arch or variant[len('hornet_'):]])
    model_args.update(kwargs)
    return build_model_with_cfg(
        HorNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls=HorNetFeatures),
        **model_args,
    )


def _cfg(url: str = '', **kwargs) -> dict:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': _STEM_CONV, 'classifier': 'head',
        'license': 'mit', 'paper_ids': 'arXiv:2207.14284',
        **kwargs,
    }


_ZOO = 'https://cloud.tsinghua.edu.cn/f/{}/?dl=1'  # the release's links (origin_url): no file name to cache
# The released ImageNet-1K weights as mirrored by OpenMMLab, each name ending in its sha256 prefix
# (mmpretrain 1.2's configs/hornet/metafile.yml lists all six). pretrained=True downloads them into
# torch's hub cache through models/hub.py (hash checked; HORNET_WEIGHTS_MIRROR replaces the base).
_MIRROR = RELEASE_BASE + 'hornet-{}_3rdparty_in1k_20220915-{}.pth'
# Not here: the 384 px HorNet-B GF has no mirrored file, and for HorNet-L older mmpretrain documents
# name hornet-large{,-gf,-gf384}_3rdparty_in21k_20220909-{9ccef421,3aea3b61,80894290}.pth, which the
# installed metafile does not confirm and whose names say ImageNet-22K heads, not the in22k_ft_in1k
# 1000-class weights these tags describe. Those tags raise an error naming their origin_url.
default_cfgs = generate_default_cfgs({
    'hornet_tiny_7x7.in1k': _cfg(
        url=_MIRROR.format('tiny', '0e8eedff'), origin_url=_ZOO.format('1ca970586c6043709a3f')),
    'hornet_tiny_gf.in1k': _cfg(
        url=_MIRROR.format('tiny-gf', '4c35a66b'), origin_url=_ZOO.format('511faad0bde94dfcaa54')),
    'hornet_small_7x7.in1k': _cfg(
        url=_MIRROR.format('small', '5935f60f'), origin_url=_ZOO.format('46422799db2941f7b684')),
    'hornet_small_gf.in1k': _cfg(
        url=_MIRROR.format('small-gf', '649ca492'), origin_url=_ZOO.format('8405c984bf084d2ba85a')),
    'hornet_base_7x7.in1k': _cfg(
        url=_MIRROR.format('base', 'a06176bb'), origin_url=_ZOO.format('5c86cb3d655d4c17a959')),
    'hornet_base_gf.in1k': _cfg(
        url=_MIRROR.format('base-gf', '82c06fa7'), origin_url=_ZOO.format('6c84935e63b547f383fb')),
    'hornet_base_gf_img384.in1k': _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    # HorNet-L: pre-trained on ImageNet-22K; the released files carry a 1000-class head
    'hornet_large_7x7.in22k_ft_in1k': _cfg(origin_url=_ZOO.format('a76f7ce114ad4e9c8ffb')),
    'hornet_large_gf.in22k_ft_in1k': _cfg(origin_url=_ZOO.format('12c99a79e77341e59681')),
    'hornet_large_gf_img384.in22k_ft_in1k': _cfg(
        input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0, origin_url=_ZOO.format('9253bd0d50c84ab1b71e')),
})


@register_model
def hornet_tiny_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_tiny_7x7', pretrained, **kwargs)


@register_model
def hornet_tiny_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_tiny_gf', pretrained, **kwargs)


@register_model
def hornet_small_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_small_7x7', pretrained, **kwargs)


@register_model
def hornet_small_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_small_gf', pretrained, **kwargs)


@register_model
def hornet_base_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_base_7x7', pretrained, **kwargs)


@register_model
def hornet_base_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_base_gf', pretrained, **kwargs)


@register_model
def hornet_base_gf_img384(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_base_gf_img384', pretrained, **kwargs)


@register_model
def hornet_large_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_large_7x7', pretrained, **kwargs)


@register_model
def hornet_large_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_large_gf', pretrained, **kwargs)


@register_model
def hornet_large_gf_img384(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_large_gf_img384', pretrained, **kwargs)
