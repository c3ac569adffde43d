"""The fast paths of HorNet's layers, each with its plain fallback.

``models/hornet.py`` assembles the network from these functions; what they compute is the plain
formula next to each (``benchmarks/reference_hornet.py`` writes the whole network that way, and the
tests compare the two). What differs is only how, and each function's docstring says when its fast
path runs and why:

* :func:`global_filter`: the GF filter ``irfft2(rfft2(x) * w)``, as two ``torch.library`` custom
  ops with a hand-written backward (eager and ``torch.compile``), as real DFT matrix products for
  ONNX (``use_dft``), or as plain ``torch.fft`` ops (``torch.export``, FX, dispatch modes);
  :func:`resize_complex_weight` fits a filter to the input size.
* :func:`depthwise_conv2d`: a depthwise "same" convolution whose CPU backward runs as two forward
  convolutions; elsewhere ``F.conv2d``.
* :func:`linear_post` and :func:`linear_gate`: ``F.linear`` followed by a GELU, a gate product or
  a residual add, fused into one oneDNN kernel on CPU (``torch.ops.mkldnn._linear_pointwise``);
  elsewhere plain ops.
* :func:`folds_weights` decides between the two ways the layers apply their scales: folded into the
  weights (CPU, where it saves passes over activations) or, on CUDA, the lean path of
  :func:`scale_add`, :func:`scale_params`, :func:`autocast_weights`, :func:`layer_norm` (:class:`LayerNorm`,
  :class:`LayerNorm2d`, :class:`Conv2d`, :class:`Linear`) and :func:`interleave_channels`, which keeps
  bf16 autocast in bf16 (``benchmarks/GPU.md``, "The lean CUDA path").
* :func:`weight_cache`: on the lean path, inference (grad disabled) keeps the autocast-dtype copies of
  the weights across forwards until a parameter changes, instead of casting them in every forward.

The op-level timings behind each choice are in ``benchmarks/results/cpu_kernels_2threads.md`` (one section per fast
path), the whole-model effect in the other files of ``benchmarks/results/`` (``benchmarks/README.md``
tells the story). The size thresholds below were tuned on the 2-core CPU of those runs.
"""
import contextlib
import math
import weakref
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d as _TimmLayerNorm2d
from timm.layers import register_notrace_function
from torch._subclasses.fake_tensor import FakeTensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

__all__ = ['ONEDNN_INFER_MIN_MACS', 'ONEDNN_LINEAR', 'ONEDNN_TRAIN_MIN_MACS', 'Conv2d', 'LayerNorm', 'LayerNorm2d',
           'Linear', 'autocast_weights', 'clear_weight_cache', 'cuda_path', 'depthwise_conv2d', 'folds_weights',
           'global_filter', 'global_filter_backward_op', 'global_filter_op', 'gf_filter', 'interleave_channels',
           'layer_norm', 'linear_gate', 'linear_post', 'resize_complex_weight', 'scale_add', 'scale_params',
           'weight_cache']


def resize_complex_weight(weight: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a GF filter ``(C, h, w, 2)`` to ``(C, size[0], size[1], 2)``.

    Real and imaginary parts are resized independently with bilinear interpolation,
    ``align_corners=True``; that is what lets a GF model run at any input size (:func:`global_filter`
    resizes on every call whose input differs from the filter's size, a no-op otherwise) and a
    checkpoint load into a model with other filter sizes (:func:`models.resize_gf_filters`).
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
# (benchmarks/results/cpu_kernels_2threads.md, "Global filter"). Equal to
# autograd's gradients to float rounding (tests/test_ops.py).
#
# Custom ops, not an autograd.Function, so that torch.compile keeps them whole: the graph holds two
# opaque real-valued ops instead of complex FFT and product nodes, which inductor cannot generate
# code for (it falls back op by op and warns), and the compiled backward is this one.

@torch.library.custom_op('hornet::global_filter', mutates_args=())
def global_filter_op(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the filtered ``x`` and ``rfft2(x)`` as a real view (saved for the backward)."""
    spec = torch.fft.rfft2(x, dim=(-2, -1), norm='ortho')
    y = torch.fft.irfft2(spec * torch.view_as_complex(weight), s=x.shape[-2:], dim=(-2, -1), norm='ortho')
    return y, torch.view_as_real(spec)


@global_filter_op.register_fake
def _(x, weight):
    # the FFTs return dense tensors whatever the input's strides
    return x.new_empty(x.shape), x.new_empty((*x.shape[:-1], x.shape[-1] // 2 + 1, 2))


# conj_physical, not conj: a product with a lazily conjugated view came out unconjugated when
# the op ran inside a compiled graph (torch 2.14, aot_eager and inductor; tests/test_ops.py)
@torch.library.custom_op('hornet::global_filter_backward', mutates_args=())
def global_filter_backward_op(grad: torch.Tensor, spec: torch.Tensor, weight: torch.Tensor, need_x: bool,
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


@global_filter_backward_op.register_fake
def _(grad, spec, weight, need_x, need_weight):
    return (grad.new_empty(grad.shape) if need_x else grad.new_empty(0),
            weight.new_empty(weight.shape) if need_weight else weight.new_empty(0))


def _global_filter_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], inputs[1])


def _global_filter_grad(ctx, grad, _grad_spec):
    spec, weight = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad
    grad_x, grad_w = global_filter_backward_op(grad, spec, weight, need_x, need_w)
    return grad_x if need_x else None, grad_w if need_w else None


global_filter_op.register_autograd(_global_filter_grad, setup_context=_global_filter_setup)


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
    tracing (timm's notrace registry; ``models/hornet.py`` also ``torch.fx.wrap``s it): it reads
    shapes and enters autocast.

    Which form runs:

    * ``use_dft``: real DFT matrix products (:func:`models.set_dft_filter`), for ONNX, which has no FFT;
    * eager mode and ``torch.compile``: :func:`global_filter_op`, custom ops with a hand-written
      backward (one FFT pair per pass, cheaper than autograd's; compiled graphs keep them whole);
    * ``torch.export``, FX proxies and dispatch modes (the FLOP counter): the plain ``torch.fft``
      formula, so exported programs load without this package and the FFTs are counted.
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
            x = global_filter_op(x, weight.contiguous())[0]
        else:
            x = torch.fft.rfft2(x, dim=(-2, -1), norm='ortho')
            x = _complex_mul(x, weight)
            x = torch.fft.irfft2(x, s=(H, W), dim=(-2, -1), norm='ortho')
    return x.to(dtype)


class _DepthwiseConvFn(torch.autograd.Function):
    """Depthwise "same" convolution (stride 1, odd kernel, padding ``(k - 1) // 2``) whose backward
    runs as two *forward* depthwise convolutions.

    Why: on CPU, oneDNN's depthwise backward, the weight gradient above all, runs many times slower
    than its forward kernel, and it dominated a 7x7 model's training step
    (benchmarks/results/cpu_kernels_2threads.md, "Depthwise 7x7 backward"). Here:

    - input gradient: the same conv of the output gradient with the kernel flipped;
    - weight gradient: ``dW[c, i, j] = sum_{b,h,w} x[b, c, h+i-p, w+j-p] * g[b, c, h, w]``, one
      depthwise conv over the ``B * C`` maps of ``x`` with the maps of ``g`` as ``H x W``
      kernels (zero padding ``p`` gives exactly the ``k x k`` output), then a sum over the batch.

    Same numbers as autograd's backward up to float rounding (tests/test_ops.py).
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
    """``F.conv2d(x, weight, bias, padding=padding, groups=C)`` for a depthwise ``(C, 1, kh, kw)`` kernel.

    The fast path, :class:`_DepthwiseConvFn` (a backward several times faster), runs on CPU for "same"
    kernels of 5 or more when a gradient is needed: HorNet's 7x7 mixer in training. Everywhere else
    (no gradient, CUDA, small kernels, other padding) it is plain ``F.conv2d``. Under autocast the
    inputs take the autocast dtype first, as ``F.conv2d`` would. A leaf for FX tracing."""
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


try:  # oneDNN's matmul with fused post-ops, the kernel inductor uses for CPU inference (None: plain ops)
    ONEDNN_LINEAR = torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
except (AttributeError, RuntimeError):
    ONEDNN_LINEAR = None


def _fused_linear_dtype(x, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype to run :func:`linear_post` in on oneDNN, or None to run plain ops.

    Only on CPU in eager mode: torch.compile fuses on its own, FX proxies and dispatch modes (e.g.
    the FLOP counter) see plain aten ops.
    """
    if ONEDNN_LINEAR is None or not torch.backends.mkldnn.enabled or not _cpu_eager(x):
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
# and this file's checks cost a fixed time per call, which small products do not win back. float32
# inference breaks even around 2**24; bf16 inference keeps every product fused (a threshold cost
# speed there). Training pays the autograd Function's fixed cost on top, hence the higher threshold.
# The timings: benchmarks/results/cpu_kernels_2threads.md, "Fused CPU inference" and "CPU training products".
ONEDNN_INFER_MIN_MACS = 2 ** 24
ONEDNN_TRAIN_MIN_MACS = 2 ** 26


class _OneDNNLinearFn(torch.autograd.Function):
    """``x @ weight.T + bias (+ other)`` for CPU training, its forward and its input gradient on
    oneDNN's matmul instead of MKL's sgemm (``F.linear``'s path); the weight gradient stays ``torch.mm``.

    Why: for HorNet's shapes oneDNN's forward runs faster than sgemm, the bias comes in without
    addmm's copy of it into the output, and the residual add (``other``) rides along. The input
    gradient ``grad @ weight`` is oneDNN's linear with ``weight.t()`` as a strided view (no copy),
    again faster than sgemm in float32. For the weight gradient sgemm was as fast or faster
    (benchmarks/results/cpu_kernels_2threads.md, "CPU training products on oneDNN").
    """

    @staticmethod
    def forward(ctx, x, weight, bias, other):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if other is not None:
            return ONEDNN_LINEAR.binary(x, other, weight, bias, 'add')
        return ONEDNN_LINEAR(x, weight, bias, 'none', [], '')

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        g2 = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[0]:
            # float32: oneDNN takes the transposed weight as a strided view (no copy) and runs
            # faster than sgemm here; bf16 mm already is oneDNN
            if grad.dtype == torch.float32:
                grad_x = ONEDNN_LINEAR(g2, weight.t(), None, 'none', [], '')
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

    On CPU the product runs on oneDNN (in float32 from ``ONEDNN_INFER_MIN_MACS`` multiply-adds). For
    inference it is one kernel with the bias and ``post`` fused in: no extra pass over the result
    for the bias (addmm copies it in first), the GELU, the gnConv gate or the residual, each a full
    read and write of a large activation (benchmarks/results/cpu_kernels_2threads.md). For training,
    products of ``ONEDNN_TRAIN_MIN_MACS`` multiply-adds and more go through
    :class:`_OneDNNLinearFn` (bias and residual fused into the forward; the GELU and the gate
    product stay separate ops, their backward needs the product's output).
    Under bf16 autocast the operands are cast as autocast would; an ``'add'`` whose ``other`` has
    another dtype keeps the plain ops, so a float32 sum stays float32. Elsewhere (CUDA,
    torch.compile, FX, dispatch modes) plain ops.
    """
    dtype = _fused_linear_dtype(x, weight)  # None for FX proxies, under torch.compile, ...
    macs = x.numel() * weight.shape[0] if dtype is not None else 0
    min_macs = ONEDNN_INFER_MIN_MACS if dtype == torch.float32 else 0
    if dtype is not None and macs >= min_macs and not (post == 'add' and other.dtype != dtype):
        grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                            or (bias is not None and bias.requires_grad)
                                            or (other is not None and other.requires_grad))
        if not grad or macs >= ONEDNN_TRAIN_MIN_MACS:
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
            other = other.to(dtype) if post in ('mul', 'add') else None
            # the operands already have the autocast dtype; entering a context has a cost per call
            # (benchmarks/results/cpu_kernels_2threads.md), so only when autocast is on
            autocast_on = torch.is_autocast_enabled('cpu')
            with torch.autocast('cpu', enabled=False) if autocast_on else contextlib.nullcontext():
                if not grad:
                    if post in ('mul', 'add'):
                        return ONEDNN_LINEAR.binary(x, other, weight, bias, post)
                    return ONEDNN_LINEAR(x, weight, bias, post, [], 'none' if post == 'gelu' else '')
                y = _OneDNNLinearFn.apply(x, weight, bias, other if post == 'add' else None)
                return y if post == 'add' else _apply_post(y, post, other)  # the add is fused in
    return _apply_post(F.linear(x, weight, bias), post, other)


def linear_gate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gate: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight, bias) * gate``: one step of gnConv's recursion (a 1x1 conv on a
    channels-last ``x``, times a gate of the result's shape), fused on CPU inference.

    :func:`linear_post` with ``post='mul'``: for CPU inference the product and the gate multiply are
    one oneDNN kernel; elsewhere the plain ops.
    """
    return linear_post(x, weight, bias, 'mul', gate)


# ----------------------------------------------------------------------------- the lean CUDA path
#
# On CPU the layers fold their scales (gnConv's gate scale, the layer scales) into the weights of the
# products next to them: a pass fewer over an activation each, and fused oneDNN kernels. On CUDA under
# autocast folding costs more than it saves: a folded weight is no leaf tensor, so it is multiplied and
# cast to bf16 again in every forward (two launches each), and LayerNorm runs and returns float32, so
# the product after it casts back. The lean path instead casts each weight once, applies the scales to
# the product's output in the kernel that adds the residual (:func:`scale_add`), and runs the norms in
# the autocast dtype. The estimates: benchmarks/results/gpu_roofline_2026-12-06_lean.md.

_FORCE_CUDA_PATH = [False]


@contextlib.contextmanager
def cuda_path() -> Iterator[None]:
    """Run the layers' CUDA code path whatever the device (tests compare it with the CPU path on CPU)."""
    prev = _FORCE_CUDA_PATH[0]
    _FORCE_CUDA_PATH[0] = True
    try:
        yield
    finally:
        _FORCE_CUDA_PATH[0] = prev


def folds_weights(x) -> bool:
    """Whether the layers fold their scales into weights (CPU tensors, FX proxies: the CPU path) or take
    the lean path (tensors on any other device, e.g. CUDA, eager or compiled; or inside :func:`cuda_path`)."""
    if _FORCE_CUDA_PATH[0]:
        return False
    return not (isinstance(x, torch.Tensor) and x.device.type != 'cpu')


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


# ----------------------------------------------------------------------------- the weight cache
#
# In eager mode every forward casts every weight to the autocast dtype again (autocast's own cache
# lives for one autocast region), and scales the mixer's last weight and bias again: on a GPU these are
# ~23 launch-bound kernels per HorNet block (benchmarks/GPU.md, "What eager leaves"). For inference
# their results only change when a parameter does, so the lean path keeps them.

_WEIGHT_CACHE_ON = [True]
# id(weight, or a view's base) -> (weak ref to it, {tag: (fingerprints of the sources, weak refs to their
# storages, outputs)}): outside state_dict / parameters() / buffers(), and an entry goes with its weight
# (the weak ref's callback). A plain dict and weak refs, not a WeakKeyDictionary: a look-up costs less
# host time than the two launches it saves (torch.utils.weak's dictionary costs as much as them).
_WEIGHT_CACHE: dict[int, tuple[weakref.ref, dict]] = {}


def _forget(ref: weakref.ref, key: int) -> None:
    slot = _WEIGHT_CACHE.get(key)
    if slot is not None and slot[0] is ref:
        del _WEIGHT_CACHE[key]


def _cache_entries(t: torch.Tensor) -> dict:
    """The cache's entries keyed on ``t`` (tests)."""
    slot = _WEIGHT_CACHE.get(id(t))
    return slot[1] if slot is not None and slot[0]() is t else {}


@contextlib.contextmanager
def weight_cache(enabled: bool = True) -> Iterator[None]:
    """Switch the inference weight cache of the lean (CUDA) path on or off inside the block (on by default).

    When grad is disabled (``torch.no_grad``, ``torch.inference_mode``), the lean path of the layers
    keeps what it derives from the weights alone, across forwards: the autocast-dtype copy of every
    weight, bias, norm parameter and layer scale, the mixer's scaled last weight and bias, and the GF
    filter's dense float32 view. A forward reuses them until a source parameter changes: each entry
    is keyed on the parameter object, its ``_version`` (bumped by an optimizer step, ``load_state_dict``,
    any in-place op on it), its storage (``data_ptr``, held by a weak reference so that a storage freed
    by ``model.to()`` / ``.half()`` can never be mistaken for a new one at the same address), shape,
    strides, device and dtype, and on the autocast dtype.

    Helps: evaluation loops, ``predict.py``, ``validate.py``, any repeated inference on CUDA (under
    autocast no weight cast per forward; the estimate: benchmarks/results/gpu_roofline_2026-12-06_weight_cache.md).
    Costs: one autocast-dtype copy of the
    weights (half the float32 model's size in bf16; plus a float32 copy of each GF filter resized to an
    input size other than its own), held until the parameter is freed, the model
    switches between ``train()`` and ``eval()`` (:class:`models.HorNet` clears it), or
    :func:`clear_weight_cache`; and on the host a dictionary look-up and a few attribute reads per
    layer and forward, less than the casts it replaces cost there.

    Never used: with grad enabled (training keeps autocast's casts, which carry the graph), on the
    CPU path (:func:`folds_weights`), under ``torch.compile``, ``torch.jit.trace`` or dispatch modes
    (a captured graph must read the parameters). Not seen: a write through ``param.data`` (autograd
    gives ``.data`` its own version counter); write under ``torch.no_grad()`` to the parameter itself
    (as optimizers and ``load_state_dict`` do) or call :func:`clear_weight_cache` after it.
    """
    prev = _WEIGHT_CACHE_ON[0]
    _WEIGHT_CACHE_ON[0] = enabled
    try:
        yield
    finally:
        _WEIGHT_CACHE_ON[0] = prev


def clear_weight_cache(module: nn.Module | None = None) -> None:
    """Drop the weight cache's entries of ``module``'s parameters (all entries when None), freeing their memory."""
    if module is None:
        _WEIGHT_CACHE.clear()
        return
    for p in module.parameters():
        if _cache_entries(p):
            del _WEIGHT_CACHE[id(p)]


def _caches(x) -> bool:
    """Whether the lean path may reuse cached weight copies for input ``x`` (see :func:`weight_cache`)."""
    return (_WEIGHT_CACHE_ON[0] and not torch.is_grad_enabled() and isinstance(x, torch.Tensor)
            and not folds_weights(x) and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and not is_in_torch_dispatch_mode())


def _fingerprint(t: torch.Tensor) -> tuple:
    # _version: bumped by in-place ops; data_ptr (with the storage's weak ref, below): a new storage
    ptr = 0 if isinstance(t, FakeTensor) else t.data_ptr()  # fake tensors have no data (shape only)
    return id(t if t._base is None else t._base), t._version, ptr, t.shape, t.stride(), t.dtype, t.device


def _cached(tag: tuple, sources: Sequence[torch.Tensor], compute: Callable[[], tuple]) -> tuple:
    """``compute()`` (tensors derived from ``sources`` alone), reused while the sources are unchanged."""
    base = sources[0] if sources[0]._base is None else sources[0]._base
    slot = _WEIGHT_CACHE.get(id(base))
    if slot is not None and slot[0]() is base:
        hit = slot[1].get(tag)
        try:
            if hit is not None and hit[0] == tuple(_fingerprint(t) for t in sources) \
                    and not any(r.expired() for r in hit[1]):
                return hit[2]
        except RuntimeError:  # a source became an inference tensor (``param.data = ...``): no version
            pass
    out = compute()
    # not cached: inference tensors (no version counter to key on); an output that aliases a source
    if any(t.is_inference() for t in sources) \
            or not all(o is None or (o._base is None and all(o is not t for t in sources)) for o in out):
        return out
    if slot is None or slot[0]() is not base:
        key = id(base)
        slot = _WEIGHT_CACHE[key] = (weakref.ref(base, lambda r: _forget(r, key)), {})
    slot[1][tag] = (tuple(_fingerprint(t) for t in sources),
                    tuple(StorageWeakRef(t.untyped_storage()) for t in sources), out)
    return out


def autocast_weights(x: torch.Tensor, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """``tensors`` cast to the autocast dtype of ``x``'s device (unchanged without autocast): one cast
    per weight, shared by the slices taken of it afterwards (autocast casts every slice again). For
    inference the casts are kept across forwards (:func:`weight_cache`)."""
    dtype = _autocast_dtype(x)
    return tensors if dtype is None else _cast(x, dtype, tensors)


def _cast(x, dtype: torch.dtype, tensors: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor | None, ...]:
    """``tensors`` in ``dtype`` (None and those already in it unchanged), the casts kept across
    forwards for inference on ``x`` (:func:`weight_cache`)."""
    todo = [t for t in tensors if t is not None and t.dtype != dtype]
    if not todo:
        return tuple(tensors)
    if _caches(x):
        cast = iter(_cached(('cast', dtype), todo, lambda: tuple(t.to(dtype) for t in todo)))
    else:
        cast = iter([t.to(dtype) for t in todo])
    return tuple(t if t is None or t.dtype == dtype else next(cast) for t in tensors)


def scale_params(x, scale: float, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """``(weight * scale, bias * scale)`` (``scale == 1``: unchanged), for a layer whose output is
    scaled; on the lean path in one launch for both (``torch._foreach_mul``, differentiable). For
    inference on the lean path the results come cast to the autocast dtype and are kept across
    forwards (:func:`weight_cache`); the cast is the one the layer would make next."""
    if scale == 1.0:
        return weight, bias
    if folds_weights(x) or bias is None:
        return weight * scale, bias * scale if bias is not None else None
    if not _caches(x):
        return tuple(torch._foreach_mul([weight, bias], scale))
    dtype = _autocast_dtype(x)

    def compute():
        out = torch._foreach_mul([weight, bias], scale)
        return tuple(t.to(dtype) for t in out) if dtype is not None else tuple(out)
    return _cached(('scale', scale, dtype), (weight, bias), compute)


def gf_filter(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The GF filter ``weight`` as :func:`global_filter` uses it for ``x`` (B, C, H, W): float32,
    resized to ``(H, W // 2 + 1)``, dense (``model.to(memory_format=torch.channels_last)`` makes the
    4-D filter channels-last, and the FFT product needs it dense). Kept across forwards for inference
    on the lean path (:func:`weight_cache`); elsewhere :func:`global_filter` does the same inside."""
    if not _caches(x):
        return weight
    H, W = x.shape[-2:]
    return _cached(('gf', H, W), (weight,),
                   lambda: (resize_complex_weight(weight.float(), (H, W // 2 + 1)).contiguous(),))[0]


def scale_add(y: torch.Tensor, scale: torch.Tensor | None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + y * scale`` (each term optional) in ``y``'s dtype, one kernel (``addcmul``): the
    layer scale rides on the residual add instead of being folded into the weights."""
    if scale is not None:
        scale = _cast(y, y.dtype, (scale,))[0]  # a float32 scale would make the bf16 product float32
        return torch.addcmul(residual, y, scale) if residual is not None else y * scale
    return y + residual if residual is not None else y


def layer_norm(x: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None,
               bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``F.layer_norm``; under autocast on the lean path in the autocast dtype (input, weight, bias and
    output; the statistics are float32 inside the kernel), where autocast would run it in float32 and
    the next product would cast its output back."""
    dtype = None if folds_weights(x) else _autocast_dtype(x)
    if dtype is None:
        return F.layer_norm(x, normalized_shape, weight, bias, eps)
    x, weight, bias = x.to(dtype), *autocast_weights(x, weight, bias)
    with torch.autocast(x.device.type, enabled=False):
        return F.layer_norm(x, normalized_shape, weight, bias, eps)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters) whose lean path runs in the autocast dtype (:func:`layer_norm`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if folds_weights(x):
            return super().forward(x)
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class LayerNorm2d(_TimmLayerNorm2d):
    """timm's channels-first ``LayerNorm2d`` (same parameters) whose lean path runs in the autocast
    dtype (:func:`layer_norm`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if folds_weights(x):
            return super().forward(x)
        x = layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters) whose lean path casts its weights with :func:`autocast_weights`
    (the same casts autocast makes, kept across forwards for inference: :func:`weight_cache`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if folds_weights(x):
            return super().forward(x)
        return self._conv_forward(x, *autocast_weights(x, self.weight, self.bias))


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters) whose lean path casts its weights with :func:`autocast_weights`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if folds_weights(x):
            return super().forward(x)
        return F.linear(x, *autocast_weights(x, self.weight, self.bias))


def interleave_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Channels-last ``(B, H, W, 2C)`` tensor whose channel ``2k`` is channel ``k`` of the NCHW ``a``
    and ``2k + 1`` channel ``k`` of ``b``, in ``a``'s dtype: ``b`` (the float32 global filter output)
    is converted in the copy that interleaves it, not in a pass of its own."""
    B, C, H, W = a.shape
    out = a.new_empty((B, H, W, C, 2))
    out[..., 0] = a.permute(0, 2, 3, 1)
    out[..., 1] = b.permute(0, 2, 3, 1)
    return out.flatten(-2)
