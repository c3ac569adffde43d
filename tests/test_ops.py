"""models/ops.py: the fast paths (global-filter custom ops, depthwise conv, fused linear maps)
compute what their plain fallbacks compute, and run where their docstrings say."""
import pytest
import timm
import torch
import torch.nn.functional as F

import calc_flops
from helpers import SMALL, rel_err
from models import ops
from models.ops import (
    depthwise_conv2d,
    global_filter,
    global_filter_backward_op,
    global_filter_op,
    linear_gate,
    linear_post,
    resize_complex_weight,
)

VARIANTS = ['hornet_tiny_7x7', 'hornet_tiny_gf']


@pytest.mark.parametrize('shape,k,channels_last,bias', [
    ((3, 24, 13, 11), 7, True, True), ((2, 16, 9, 9), 5, False, True), ((2, 8, 6, 7), 7, True, False)])
def test_depthwise_conv_fast_backward_equals_autograd(shape, k, channels_last, bias):
    """The CPU depthwise conv whose backward runs as two forward convs (models.depthwise_conv2d):
    same output and gradients as autograd's convolution backward, float32 and bf16 autocast."""
    C = shape[1]
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.randn(C, 1, k, k, requires_grad=True)
    b = torch.randn(C, requires_grad=True) if bias else None
    inputs = (x, w, b) if bias else (x, w)
    g = torch.randn(shape)
    y = depthwise_conv2d(x, w, b, (k // 2, k // 2))
    assert type(y.grad_fn).__name__ == '_DepthwiseConvFnBackward'  # the fast path ran
    ref = F.conv2d(x, w, b, padding=k // 2, groups=C)
    assert torch.equal(y, ref)
    for a, e in zip(torch.autograd.grad(y, inputs, g), torch.autograd.grad(ref, inputs, g), strict=True):
        assert rel_err(a, e) < 1e-6
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = depthwise_conv2d(x, w, b, (k // 2, k // 2))
        ref = F.conv2d(x, w, b, padding=k // 2, groups=C)
    assert y.dtype == ref.dtype == torch.bfloat16 and torch.equal(y, ref)
    for a, e in zip(torch.autograd.grad(y, inputs, g), torch.autograd.grad(ref, inputs, g), strict=True):
        assert a.dtype == e.dtype == torch.float32 and rel_err(a, e) < 1e-2  # bf16 rounding of the partial sums
    # no gradient needed, a 3x3 kernel or another padding: plain F.conv2d
    with torch.no_grad():
        assert depthwise_conv2d(x, w, b, (k // 2, k // 2)).grad_fn is None
    w3 = torch.randn(C, 1, 3, 3, requires_grad=True)
    assert type(depthwise_conv2d(x, w3, None, (1, 1)).grad_fn).__name__ != '_DepthwiseConvFnBackward'


@pytest.mark.parametrize('shape,filter_hw', [((3, 6, 14, 14), (14, 8)), ((2, 4, 7, 7), (7, 4)),
                                              ((2, 4, 6, 9), (6, 5)), ((2, 4, 16, 16), (14, 8))])
def test_global_filter_fast_backward_equals_autograd(shape, filter_hw):
    """The global filter's custom ops with the hand-written backward (models.ops.global_filter_op):
    same output and gradients as autograd through irfft2(rfft2(x) * w), for even and odd widths and
    for a filter resized to another input size; float64 to 1e-12, float32 to 1e-5."""

    def plain(x, w):
        w = torch.view_as_complex(resize_complex_weight(w, (x.shape[-2], x.shape[-1] // 2 + 1)).contiguous())
        return torch.fft.irfft2(torch.fft.rfft2(x, norm='ortho') * w, s=x.shape[-2:], norm='ortho')
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        x = torch.randn(shape, dtype=dtype, requires_grad=True)
        w = torch.randn(shape[1], *filter_hw, 2, dtype=dtype, requires_grad=True)
        g = torch.randn(shape, dtype=dtype)
        if dtype == torch.float64:  # global_filter computes in float32; check the op itself
            y = global_filter_op(x, resize_complex_weight(w, (shape[2], shape[3] // 2 + 1)).contiguous())[0]
        else:
            y = global_filter(x, w)
        assert 'hornet_global_filter' in type(y.grad_fn).__name__  # the custom op ran
        ref = plain(x, w)
        assert rel_err(y, ref) < tol
        for a, e in zip(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(ref, (x, w), g), strict=True):
            assert rel_err(a, e) < tol
    with torch.no_grad():
        assert global_filter(x, w).grad_fn is None and rel_err(global_filter(x, w), plain(x, w)) < 1e-5


def test_global_filter_custom_ops_pass_opcheck():
    """torch.library.opcheck on the global filter's custom ops: schema, autograd registration, fake
    (meta) kernels for channels_last inputs, and the same outputs inside an AOT-compiled graph
    (the backward op once failed that: a lazily conjugated view lost its conjugation there)."""
    x = torch.randn(2, 4, 7, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 7, 4, 2, requires_grad=True)
    torch.library.opcheck(global_filter_op, (x, w))
    g, spec = torch.randn(2, 4, 7, 7).contiguous(memory_format=torch.channels_last), torch.randn(2, 4, 7, 4, 2)
    for need_x, need_w in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(global_filter_backward_op, (g, spec, w.detach(), need_x, need_w))


@pytest.mark.parametrize('name', VARIANTS)
def test_fused_cpu_inference_equals_plain_ops(name, monkeypatch):
    """CPU inference runs each block's matrix products with the bias, GELU, gates and residuals
    fused (oneDNN, models.linear_post), in float32 from 2**24 multiply-adds (smaller ones plain):
    same outputs as the plain ops within 1e-5 (float32) and within the bf16 bound (autocast).
    Training runs products of 2**26 multiply-adds and more on oneDNN too (forward with bias and
    residual fused, input gradient), with the plain ops' gradients within 1e-5; the FLOP counter
    sees plain ops."""
    if ops.ONEDNN_LINEAR is None:
        pytest.fail('this torch has no oneDNN fused linear (mkldnn._linear_pointwise)')
    model = timm.create_model(name, **SMALL, layer_scale_init_value=0.5).eval()
    x = torch.randn(2, 3, 64, 64)
    calls = []
    real = ops.ONEDNN_LINEAR
    # per block: q and the GELU product plain, one gate product per order, residuals of both branches
    blocks = sum(model.depths)
    orders = sum(d * o for d, o in zip(model.depths, (2, 3, 4, 5), strict=True))

    class Counting:
        def __call__(self, *a):
            calls.append('plain')
            return real(*a)

        def binary(self, *a):
            calls.append(a[-1])
            return real.binary(*a)
    monkeypatch.setattr(ops, 'ONEDNN_LINEAR', Counting())
    with torch.no_grad():
        small_plain = model(x)  # in float32 this model's products are all below the size threshold
        assert calls == []
        with torch.autocast('cpu', dtype=torch.bfloat16):  # bf16 has no size threshold
            fused_bf16 = model(x)
        assert len(calls) == 4 * blocks + orders
        monkeypatch.setattr(ops, 'ONEDNN_INFER_MIN_MACS', 0)
        fused = model(x)
    assert calls.count('plain') == 2 * 2 * blocks and calls.count('mul') == 2 * orders
    assert calls.count('add') == 2 * 2 * blocks  # under CPU autocast the residual stream is bf16 too
    calls.clear()
    monkeypatch.setattr(ops, 'ONEDNN_LINEAR', None)
    with torch.no_grad():
        plain = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            plain_bf16 = model(x)
    assert rel_err(fused, plain) < 1e-5 and torch.equal(small_plain, plain)
    assert rel_err(fused_bf16.float(), plain.float()) < 5e-2 and rel_err(plain_bf16.float(), plain) < 5e-2
    # training: products at or above the size threshold through _OneDNNLinearFn (residuals fused),
    # same gradients as the plain ops
    model.train()
    xg = x.clone().requires_grad_()
    model(xg).square().mean().backward()
    plain_grads = [p.grad.clone() for p in model.parameters()] + [xg.grad]
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(ops, 'ONEDNN_LINEAR', Counting())
    model(x).square().mean().backward()  # this model's products are all below the size threshold
    assert calls == []
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(ops, 'ONEDNN_TRAIN_MIN_MACS', 0)
    xg = x.clone().requires_grad_()
    loss = model(xg).square().mean()
    # per block order + 4 forward products (q, p, the order - 1 gate maps, proj_out, pwconv1, pwconv2),
    # two of them with the residual
    assert calls.count('add') == 2 * blocks and calls.count('mul') == 0
    assert calls.count('plain') == orders + 2 * blocks
    calls.clear()
    loss.backward()
    fused_grads = torch.cat([p.grad.flatten() for p in model.parameters()] + [xg.grad.flatten()])
    assert rel_err(fused_grads, torch.cat([g.flatten() for g in plain_grads])) < 1e-5
    assert rel_err(xg.grad, plain_grads[-1]) < 1e-5
    # the backward: each product's input gradient on oneDNN (the weight's transposed view), the
    # weight gradients torch.mm
    assert calls == ['plain'] * (orders + 4 * blocks)
    calls.clear()
    with torch.no_grad():
        calc_flops.count_flops(model, (64, 64))  # the FLOP counter's dispatch mode: plain ops
    assert calls == []


@pytest.mark.parametrize('shape,out', [((2, 5, 7, 8), 16), ((8, 32, 32, 64), 256)])
def test_linear_gate_is_linear_times_gate(shape, out):
    """linear_gate(x, w, b, g) = F.linear(x, w, b) * g, and linear_post's other post-ops their
    formulas: a small product on plain ops (bit for bit), a large one fused on oneDNN for CPU
    inference (to float rounding), and with gradients."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    w, b = torch.randn(out, shape[-1], generator=gen) / shape[-1] ** 0.5, torch.randn(out, generator=gen)
    g = torch.randn(*shape[:-1], out, generator=gen)
    small = x.numel() * out < ops.ONEDNN_INFER_MIN_MACS
    with torch.no_grad():
        y = F.linear(x, w, b)
        for got, ref in ((linear_gate(x, w, b, g), y * g), (linear_post(x, w, b, 'mul', g), y * g),
                         (linear_post(x, w, b, 'add', g), y + g), (linear_post(x, w, b, 'gelu'), F.gelu(y)),
                         (linear_post(x, w, b), y)):
            if small:
                assert torch.equal(got, ref)
            else:
                assert rel_err(got, ref) < 1e-6
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    got = linear_gate(xg, wg, b, g)
    ref = F.linear(x.requires_grad_(), w.requires_grad_(), b) * g
    assert rel_err(got, ref) < 1e-6
    for a, e in zip(torch.autograd.grad(got.square().sum(), (xg, wg)), torch.autograd.grad(ref.square().sum(), (x, w)),
                    strict=True):
        assert rel_err(a, e) < 1e-5


def test_model_file_holds_no_kernels():
    """The hand-written CPU paths live in models/ops.py; the model file only assembles layers."""
    import models.hornet
    with open(models.hornet.__file__, encoding='utf-8') as f:
        text = f.read()
    assert [w for w in ('torch.library', 'autograd.Function', 'mkldnn') if w in text] == []
    assert models.depthwise_conv2d is depthwise_conv2d and models.global_filter is global_filter
    assert models.linear_post is linear_post and models.linear_gate is linear_gate
