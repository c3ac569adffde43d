"""Model library: checkpoint layout, numerics against the spec, timm API, loading, autocast, FLOPs."""
import json
import math
import os

import pytest
import timm
import torch
import torch.nn.functional as F

import calc_flops
import models
from helpers import SMALL, quick_tier, rel_err
from models import CheckpointMismatchError, GlobalLocalFilter, GnConv, HorBlock

DATA = os.path.join(os.path.dirname(__file__), 'data')
with open(os.path.join(DATA, 'hornet_checkpoint_layout.json')) as f:
    LAYOUT = json.load(f)


def small(name='hornet_tiny_gf', **kwargs):
    return timm.create_model(name, **{**SMALL, **kwargs})


# ---------------------------------------------------------------- layout
@pytest.mark.parametrize('name', list(LAYOUT))
def test_state_dict_matches_released_layout(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == list(LAYOUT[name]['state_dict'].items())
    assert sum(p.numel() for p in model.parameters()) == LAYOUT[name]['num_params']


def test_all_variants_registered():
    assert sorted(timm.list_models('hornet_*')) == sorted(LAYOUT)


# ---------------------------------------------------------------- reference formulas (float64, loops)
def ref_ln_cf(x, weight, bias, eps=1e-6):
    """LN over channels of an NCHW tensor, written out per channel."""
    mean = sum(x[:, c] for c in range(x.shape[1])) / x.shape[1]
    var = sum((x[:, c] - mean) ** 2 for c in range(x.shape[1])) / x.shape[1]
    return torch.stack([(x[:, c] - mean) / torch.sqrt(var + eps) * weight[c] + bias[c]
                        for c in range(x.shape[1])], dim=1)


def ref_conv1x1(x, conv):
    w, b = conv.weight.double()[:, :, 0, 0], conv.bias.double()
    return torch.stack([sum(w[o, i] * x[:, i] for i in range(x.shape[1])) + b[o] for o in range(w.shape[0])], 1)


def ref_depthwise(x, weight, bias=None):
    """Depthwise conv, stride 1, 'same' zero padding, as a sum over kernel offsets."""
    k = weight.shape[-1]
    p = (k - 1) // 2
    H, W = x.shape[-2:]
    xp = F.pad(x, (p, p, p, p))
    out = torch.zeros_like(x)
    for i in range(k):
        for j in range(k):
            out += xp[:, :, i:i + H, j:j + W] * weight[:, 0, i, j].view(1, -1, 1, 1)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def ref_bilinear_align_corners(w, size):
    """Resize (C, h, w) to (C, *size) with the align_corners=True bilinear formula."""
    C, h, wd = w.shape
    H, W = size
    out = torch.zeros(C, H, W, dtype=w.dtype)
    for i in range(H):
        y = i * (h - 1) / (H - 1) if H > 1 else 0.
        y0 = min(int(math.floor(y)), h - 1)
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(W):
            x = j * (wd - 1) / (W - 1) if W > 1 else 0.
            x0 = min(int(math.floor(x)), wd - 1)
            x1, fx = min(x0 + 1, wd - 1), x - x0
            out[:, i, j] = (w[:, y0, x0] * (1 - fy) * (1 - fx) + w[:, y0, x1] * (1 - fy) * fx
                            + w[:, y1, x0] * fy * (1 - fx) + w[:, y1, x1] * fy * fx)
    return out


def ref_global_filter(x, cw):
    """Orthonormal rfft2 -> complex filter -> irfft2, as explicit DFT sums (no torch.fft)."""
    H, W = x.shape[-2:]
    Wf = W // 2 + 1
    if tuple(cw.shape[1:3]) != (H, Wf):
        cw = torch.stack([ref_bilinear_align_corners(cw[..., r], (H, Wf)) for r in range(2)], -1)
    filt = torch.complex(cw[..., 0], cw[..., 1])
    hh, ww = torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64)
    kh, kw = torch.arange(H, dtype=torch.float64), torch.arange(Wf, dtype=torch.float64)
    e_h = torch.exp(-2j * math.pi * torch.outer(kh, hh) / H)   # (k1, h)
    e_w = torch.exp(-2j * math.pi * torch.outer(kw, ww) / W)   # (k2, w)
    X = torch.einsum('ah,bw,nchw->ncab', e_h, e_w, x.to(torch.complex128)) / math.sqrt(H * W)
    Y = X * filt
    # Hermitian completion of the half spectrum, then the inverse DFT; C2R ignores the imaginary
    # part of the self-conjugate bins, which taking the real part of the full sum does as well
    full = torch.zeros(*Y.shape[:2], H, W, dtype=torch.complex128)
    full[..., :Wf] = Y
    for k2 in range(Wf, W):
        for k1 in range(H):
            full[..., k1, k2] = Y[..., (-k1) % H, W - k2].conj()
    for k2 in {0, W // 2} if W % 2 == 0 else {0}:  # self-conjugate columns: keep real-symmetric part
        col = full[..., k2].clone()
        full[..., k2] = 0.5 * (col + col[..., (-torch.arange(H)) % H].conj())
    e_w_inv = torch.exp(2j * math.pi * torch.outer(ww, torch.arange(W, dtype=torch.float64)) / W)
    out = torch.einsum('ha,wb,ncab->nchw', e_h.conj(), e_w_inv, full)
    return (out / math.sqrt(H * W)).real


def ref_glf(m, x):
    x = ref_ln_cf(x, m.pre_norm.weight.double(), m.pre_norm.bias.double())
    C = x.shape[1] // 2
    local = ref_depthwise(x[:, :C], m.dw.weight.double())
    glob = ref_global_filter(x[:, C:], m.complex_weight.double())
    out = torch.empty_like(x)
    for k in range(C):
        out[:, 2 * k], out[:, 2 * k + 1] = local[:, k], glob[:, k]
    return ref_ln_cf(out, m.post_norm.weight.double(), m.post_norm.bias.double())


def ref_gnconv(m, x):
    n = m.order
    C = m.proj_out.in_channels if isinstance(m.proj_out, torch.nn.Conv2d) else x.shape[1]
    d = [C // 2 ** (n - 1 - k) for k in range(n)]
    z = ref_conv1x1(x, m.proj_in)
    p, q = z[:, :d[0]], z[:, d[0]:]
    q = ref_glf(m.dwconv, q) if isinstance(m.dwconv, GlobalLocalFilter) \
        else ref_depthwise(q, m.dwconv.weight.double(), m.dwconv.bias.double())
    q = q * m.scale
    gates, start = [], 0
    for k in range(n):
        gates.append(q[:, start:start + d[k]])
        start += d[k]
    y = p * gates[0]
    for k in range(1, n):
        y = ref_conv1x1(y, m.pws[k - 1]) * gates[k]
    return ref_conv1x1(y, m.proj_out) if isinstance(m.proj_out, torch.nn.Conv2d) else y


def _randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


@pytest.mark.parametrize('size,filt', [((7, 9), (7, 5)), ((9, 6), (5, 3)), ((5, 5), (9, 4))])
def test_global_local_filter_equals_formula(size, filt):
    m = _randomize(GlobalLocalFilter(8, *filt)).double()
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    out = m(x)
    assert out.dtype == torch.float64 or out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_glf(m, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('order', [1, 2, 3, 4, 5])
@pytest.mark.parametrize('mixer', ['dwconv', 'gf'])
def test_gnconv_equals_formula(order, mixer):
    dim = 2 ** order
    m = _randomize(GnConv(dim, order=order, scale=1 / 3, mixer=mixer, kernel_size=5, filter_size=(4, 3))).double()
    x = torch.randn(2, dim, 7, 5, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref_gnconv(m, x), rtol=1e-6, atol=1e-6)
    # channel split d_k = C / 2**(n-1-k), smallest first
    assert m.dims == [dim // 2 ** (order - 1 - k) for k in range(order)]


def test_gnconv_in_out_widths_without_projection():
    m = GnConv(16, order=2, in_dim=24, out_dim=32)
    assert m(torch.randn(1, 24, 9, 9)).shape == (1, 32, 9, 9)
    m = _randomize(GnConv(16, order=3, proj_out=False)).double()
    x = torch.randn(1, 16, 6, 7, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref_gnconv(m, x))
    with pytest.raises(ValueError, match='divisible'):
        GnConv(20, order=4)
    with pytest.raises(ValueError, match='proj_out'):
        GnConv(16, order=2, out_dim=8, proj_out=False)


def test_horblock_equals_formula():
    blk = _randomize(HorBlock(8, order=2, scale=1 / 3)).double().eval()
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    y = x + blk.gamma1.view(1, -1, 1, 1) * ref_gnconv(blk.gnconv, ref_ln_cf(x, blk.norm1.weight, blk.norm1.bias))
    t = y.permute(0, 2, 3, 1)
    t = F.layer_norm(t, (8,), blk.norm2.weight, blk.norm2.bias, eps=1e-6)
    t = F.gelu(t @ blk.pwconv1.weight.t() + blk.pwconv1.bias) @ blk.pwconv2.weight.t() + blk.pwconv2.bias
    expected = y + (blk.gamma2 * t).permute(0, 3, 1, 2)
    torch.testing.assert_close(blk(x), expected, rtol=1e-6, atol=1e-6)
    assert HorBlock(8, layer_scale_init_value=0, order=2).gamma1 is None


def test_dft_filter_equals_fft_filter():
    m = _randomize(GlobalLocalFilter(8, 6, 4))
    x = torch.randn(2, 8, 11, 9)
    ref = m(x)
    m.use_dft = True
    torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- whole model
def test_drop_path_rates_and_init():
    model = timm.create_model('hornet_tiny_gf', drop_path_rate=0.24, head_init_scale=0.5)
    rates = [getattr(b.drop_path, 'drop_prob', 0.) for s in model.stages for b in s]
    assert len(rates) == 25
    assert isinstance(model.stages[0][0].drop_path, torch.nn.Identity)
    assert rates[0] == 0 and abs(rates[-1] - 0.24) < 1e-7 and abs(rates[12] - 0.12) < 1e-6
    assert model.stages[0][0].gamma1[0].item() == pytest.approx(1e-6)
    assert model.head.weight.std().item() == pytest.approx(0.01, rel=0.1)  # 0.02 * 0.5
    assert model.stages[2][0].gnconv.dwconv.complex_weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert float(model.head.bias.abs().max()) == 0


@pytest.mark.parametrize('hw', [(97, 131), (288, 160), (64, 64)])
def test_gf_model_any_input_size(hw):
    model = small(num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *hw))
    assert out.shape == (1, 7) and torch.isfinite(out).all()


def test_features_only_and_intermediates():
    fm = small('hornet_small_gf', features_only=True)
    assert fm.feature_info.reduction() == [4, 8, 16, 32]
    assert fm.feature_info.channels() == [16, 32, 64, 128]
    feats = fm(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6), (2, 128, 2, 3)]
    fm2 = small(features_only=True, out_indices=(1, 2))
    assert [f.shape[1] for f in fm2(torch.randn(1, 3, 64, 64))] == [32, 64]
    model = small().eval()
    x = torch.randn(1, 3, 64, 64)
    final, inter = model.forward_intermediates(x)
    assert len(inter) == 4
    torch.testing.assert_close(final, model.forward_features(x))
    torch.testing.assert_close(model.forward_head(final), model(x))
    assert model.forward_head(final, pre_logits=True).shape == (1, 128)


def test_reset_classifier():
    model = small(num_classes=10)
    model.reset_classifier(5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    assert model.get_classifier().__class__.__name__ == 'Identity'


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = small(drop_path_rate=0.2, layer_scale_init_value=1.0)
    b = small(drop_path_rate=0.2, layer_scale_init_value=1.0)
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 48, 48)
    for m in (a, b):
        torch.manual_seed(1)
        m(x).square().mean().backward()
    grads_a = {n: p.grad for n, p in a.named_parameters()}
    for n, p in b.named_parameters():
        torch.testing.assert_close(p.grad, grads_a[n], rtol=1e-5, atol=1e-7)
    assert sum(p.grad.abs().sum().item() for p in a.parameters()) > 0


@pytest.mark.parametrize('dtype,tol', [(torch.bfloat16, 1.5e-2), (torch.float16, 3e-3)])
def test_autocast_cpu_finite_and_close(dtype, tol):
    model = timm.create_model('hornet_tiny_gf', depths=(1, 1, 2, 1), base_dim=32, num_classes=10,
                              layer_scale_init_value=1.0).eval()
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=dtype):
            out = model(x)
    assert torch.isfinite(out).all()
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < tol
    # the global filter itself runs in float32 even under autocast: bit-identical to fp32
    glf = model.stages[2][0].gnconv.dwconv
    z = torch.randn(1, glf.complex_weight.shape[0], 6, 7)
    with torch.no_grad():
        plain = glf.global_filter(z)
        with torch.autocast('cpu', dtype=dtype):
            auto = glf.global_filter(z)
    assert auto.dtype == torch.float32 and torch.equal(auto, plain)


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize('fmt', ['model', 'module', 'bare', 'ddp_prefix', 'mmpretrain'])
def test_released_checkpoint_formats_load_through_timm(tmp_path, fmt):
    src = small(num_classes=1000)
    sd = src.state_dict()
    obj = {'model': {'model': sd, 'epoch': 3}, 'module': {'module': sd}, 'bare': sd,
           'ddp_prefix': {'model': {'module.' + k: v for k, v in sd.items()}},
           'mmpretrain': {'meta': {}, 'state_dict': models.to_mmpretrain(sd)}}[fmt]
    path = tmp_path / 'ckpt.pth'
    torch.save(obj, path)
    model = small(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), src.eval()(x))


def test_gf_filter_resize_and_head_drop(tmp_path):
    src = small(num_classes=1000)
    path = tmp_path / 'ckpt.pth'
    torch.save({'model': src.state_dict()}, path)
    model = small(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=10,
                  gf_sizes=(None, None, (24, 13), (12, 7)))
    w_src = src.stages[2][0].gnconv.dwconv.complex_weight.detach()
    w_new = model.stages[2][0].gnconv.dwconv.complex_weight.detach()
    assert w_new.shape[1:3] == (24, 13)
    expected = torch.stack([ref_bilinear_align_corners(w_src[..., r].double(), (24, 13)) for r in range(2)], -1)
    torch.testing.assert_close(w_new.double(), expected, rtol=1e-5, atol=1e-6)
    # corners of an align_corners resize are the source corners exactly
    assert torch.equal(w_new[:, 0, 0], w_src[:, 0, 0]) and torch.equal(w_new[:, -1, -1], w_src[:, -1, -1])
    assert model.head.weight.shape == (10, 128)
    assert torch.equal(model.stages[0][0].pwconv1.weight, src.stages[0][0].pwconv1.weight)


def test_checkpoint_filter_fn_direct_and_mismatch_error():
    src = small(num_classes=1000)
    model = small(num_classes=1000)
    out = models.checkpoint_filter_fn({'model': src.state_dict()}, model)
    model.load_state_dict(out, strict=True)
    bad = dict(src.state_dict())
    bad.pop('stages.1.0.norm1.weight')
    bad['stages.0.0.extra'] = torch.zeros(1)
    bad['downsample_layers.1.1.weight'] = torch.zeros(32, 16, 3, 3)
    with pytest.raises(CheckpointMismatchError) as err:
        models.checkpoint_filter_fn(bad, model)
    msg = str(err.value)
    assert 'missing keys (1): stages.1.0.norm1.weight' in msg
    assert 'unexpected keys (1): stages.0.0.extra' in msg
    assert 'shape mismatches (1): downsample_layers.1.1.weight (32, 16, 3, 3) vs model (32, 16, 2, 2)' in msg
    # a 7x7 checkpoint does not fit a GF model: every GF key is listed
    with pytest.raises(CheckpointMismatchError, match='missing keys'):
        models.checkpoint_filter_fn(small('hornet_tiny_7x7').state_dict(), model)


# ---------------------------------------------------------------- FLOPs
PUBLISHED_GFLOPS = {
    'hornet_tiny_7x7': 3.98, 'hornet_tiny_gf': 3.91, 'hornet_small_7x7': 8.83, 'hornet_small_gf': 8.73,
    'hornet_base_7x7': 15.58, 'hornet_base_gf': 15.46, 'hornet_large_7x7': 34.82, 'hornet_large_gf': 34.64,
    'hornet_large_gf_img384': 101.81,
}


@pytest.mark.parametrize('name', quick_tier(list(PUBLISHED_GFLOPS), ['hornet_tiny_gf']))
def test_flops_reproduce_model_zoo_table(name):
    r = calc_flops.analyse(name)
    assert round(r['gflops'], 2) == PUBLISHED_GFLOPS[name]
    assert r['params'] == LAYOUT[name]['num_params']


def test_flops_formula_small_model():
    """conv/linear multiply-adds and the FFT term against hand-computed values."""
    model = timm.create_model('hornet_tiny_gf', depths=(1, 1, 1, 1), base_dim=16, num_classes=10)
    f = calc_flops.count_flops(model, (64, 64))
    # stage 2: 4x4 map, gf over D/2 = (8+16+32+64)/2 = 60 channels; stage 3: 2x2 map, 248/2 = 124.
    # each transform's input (B, a, b, c) costs a*b*c*ceil(log2(a*b)); irfft2 input is (B, C, H, W//2+1)
    fft = (60 * 4 * 4 * math.ceil(math.log2(60 * 4)) + 60 * 4 * 3 * math.ceil(math.log2(60 * 4))
           + 124 * 2 * 2 * math.ceil(math.log2(124 * 2)) + 124 * 2 * 2 * math.ceil(math.log2(124 * 2)))
    assert fft == 21376
    assert f['fft'] == fft
    ln = 5 * (16 * 16 * 16 + 8 * 8 * 32 + 4 * 4 * 64 + 2 * 2 * 128 + 128)
    assert f['layernorm'] == ln
    assert f['total'] == f['conv_linear'] + fft + ln
    # multiply-adds from the architecture's shapes: stem 4x4/4, downsample 2x2/2, and per block
    # proj_in C->2C, proj_out C->C, pws d_k->d_{k+1}, MLP C->4C->C, mixer 7x7 dw over D = sum(d)
    # (GF: 3x3 dw over D/2), head C3 -> classes
    dims, hw, expected = [16, 32, 64, 128], 16 * 16, 16 * 16 * 16 * 3 * 16
    for i, (n, gf) in enumerate(zip((2, 3, 4, 5), (False, False, True, True), strict=True)):
        if i:
            hw //= 4
            expected += hw * dims[i - 1] * dims[i] * 4
        C = dims[i]
        d = [C // 2 ** (n - 1 - k) for k in range(n)]
        expected += hw * (2 * C * C + C * C + 8 * C * C + sum(d[k] * d[k + 1] for k in range(n - 1)))
        expected += hw * (sum(d) // 2 * 9 if gf else sum(d) * 49)
    expected += 128 * 10
    assert expected == 4124720
    assert f['conv_linear'] == expected


def test_default_cfgs_and_missing_weights_message():
    for name in LAYOUT:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        assert cfg['input_size'] == ((3, 384, 384) if name.endswith('img384') else (3, 224, 224))
        assert cfg['crop_pct'] == (1.0 if name.endswith('img384') else 0.875)
        assert cfg['num_classes'] == 1000 and cfg['classifier'] == 'head'
        assert cfg['first_conv'] == 'downsample_layers.0.0' and cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN
    # tags without a mirrored file say where the weights are; the others download (tests/test_hub.py)
    for name in ('hornet_base_gf_img384', 'hornet_large_gf'):
        with pytest.raises(ValueError, match=r'pretrained_cfg_overlay=dict\(file=PATH\)'):
            timm.create_model(name, pretrained=True)


# ---------------------------------------------------------------- timm conformance
VARIANTS = ['hornet_tiny_7x7', 'hornet_tiny_gf']


def test_factory_kwargs_device_and_dtype():
    model = timm.create_model('hornet_tiny_gf', device='meta')
    tensors = list(model.parameters()) + list(model.buffers())
    assert {t.device.type for t in tensors} == {'meta'}
    assert sum(p.numel() for p in model.parameters()) == LAYOUT['hornet_tiny_gf']['num_params']
    ref = small(num_classes=10).eval()
    half = small(num_classes=10, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    half.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, expected = half(x.bfloat16()), ref(x)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - expected).norm() / expected.norm()).item() < 5e-2
    # the classifier made by reset_classifier follows the model's device and dtype
    half.reset_classifier(3)
    assert half.head.weight.dtype == torch.bfloat16


def test_in_chans_attribute():
    assert small().in_chans == 3
    model = small(in_chans=1)
    assert model.in_chans == 1 and model.downsample_layers[0][0].weight.shape == (16, 1, 4, 4)
    assert timm.models.get_model_traits(model)['in_chans'] == 1


@pytest.mark.parametrize('training', [False, True])
def test_reset_classifier_keeps_train_mode(training):
    model = small(num_classes=10).train(training)
    model.reset_classifier(4)
    assert model.head.training is training
    assert model.head.weight.shape == (4, 128)


@pytest.mark.parametrize('name', VARIANTS)
def test_fx_trace_and_fx_features_equal_eager(name):
    model = small(name, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-6, atol=1e-6)
        inter = model.forward_intermediates(x, intermediates_only=True)
    fm = small(name, features_only=True, feature_cls='fx').eval()
    fm.load_state_dict({'graph_module.' + k: v for k, v in model.state_dict().items()
                        if not k.startswith(('norm.', 'head.'))})
    with torch.no_grad():
        feats = fm(x)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
    for f, ref in zip(feats, inter, strict=True):
        torch.testing.assert_close(f, ref, rtol=1e-6, atol=1e-6)
    # the global filter is one leaf node of the graph (it reads shapes and enters autocast)
    nodes = timm.models.get_graph_node_names(model)[1]
    assert sum('global_filter' in n for n in nodes) == (2 if name.endswith('gf') else 0)


@pytest.mark.parametrize('indices', [1, (0, 2), 4])
def test_pruned_model_every_parameter_gets_gradient(indices):
    model = small(num_classes=10)
    take = model.prune_intermediate_layers(indices, prune_head=True, prune_norm=False)
    assert 'norm.weight' not in model.state_dict() and 'head.weight' not in model.state_dict()
    x = torch.randn(2, 3, 64, 64)
    out, inter = model.forward_intermediates(x, indices=take)
    (out.square().mean() + sum(t.square().mean() for t in inter)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert len(list(model.parameters())) == len(list(model.stages[-1].parameters())) + sum(
        len(list(m.parameters())) for m in [*model.stages[:-1], *model.downsample_layers])
    # features_only (timm prunes with prune_norm=True, prune_head=True): same gradient rule
    fm = small(features_only=True, out_indices=(1, 3))
    sum(f.square().mean() for f in fm(x)).backward()
    assert [n for n, p in fm.named_parameters() if p.grad is None] == []


def test_pretrained_in_chans_1_from_3_channel_file(tmp_path):
    src = small().eval()
    path = tmp_path / 'rgb.pth'
    torch.save({'model': src.state_dict()}, path)
    model = small(in_chans=1, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    stem = model.downsample_layers[0][0].weight
    # timm's adapt_input_conv for 1 channel sums the RGB filters
    assert stem.shape == (16, 1, 4, 4)
    torch.testing.assert_close(stem, src.downsample_layers[0][0].weight.sum(1, keepdim=True))
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5)
    # any other mismatch is still reported
    bad = {k: (v[:8] if k == 'downsample_layers.0.0.weight' else v) for k, v in src.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match='downsample_layers.0.0.weight'):
        models.checkpoint_filter_fn(bad, model)


def test_torchscript_is_unsupported_with_a_clear_error():
    for module in (small(), GnConv(8, order=2), HorBlock(8, order=2), GlobalLocalFilter(8, 4, 3)):
        with pytest.raises(RuntimeError, match='does not support TorchScript.*torch.compile'):
            torch.jit.script(module)


def test_features_wrapper_conventions():
    fm = small('hornet_small_gf', features_only=True, out_indices=(1, 3))
    assert isinstance(fm, models.HorNetFeatures)
    assert fm.feature_info.channels() == [32, 128] and fm.feature_info.reduction() == [8, 32]
    assert fm.pretrained_cfg['architecture'] == 'hornet_small_gf' and 'classifier' not in fm.pretrained_cfg
    full = small('hornet_small_gf').eval()
    fm.model.load_state_dict({k: v for k, v in full.state_dict().items() if k in fm.model.state_dict()})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        inter = full.forward_intermediates(x, intermediates_only=True)
        feats = fm.eval()(x)
    torch.testing.assert_close(feats[0], inter[1])
    torch.testing.assert_close(feats[1], inter[3])
    # grad checkpointing through the wrapper: same gradients
    fm.train()
    sum(f.sum() for f in fm(x)).backward()
    grads = {n: p.grad.clone() for n, p in fm.named_parameters()}
    fm.zero_grad()
    fm.set_grad_checkpointing(True)
    assert fm.model.grad_checkpointing
    sum(f.sum() for f in fm(x)).backward()
    for n, p in fm.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6)


def test_model_conventions():
    model = small(num_classes=10).eval()
    assert model.num_features == model.head_hidden_size == 128 and model.num_classes == 10
    cfg = model.pretrained_cfg
    assert cfg['architecture'] == 'hornet_tiny_gf' and cfg['tag'] == 'in1k'
    assert cfg['pool_size'] == (7, 7) and cfg['interpolation'] == 'bicubic' and cfg['license'] == 'mit'
    assert cfg['origin_url'].startswith('https://cloud.tsinghua.edu.cn/')
    assert model.get_submodule(cfg['first_conv']).in_channels == 3
    assert model.get_submodule(cfg['classifier']) is model.get_classifier()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feat = model.forward_features(x)
        pre = model.forward_head(feat, pre_logits=True)
        torch.testing.assert_close(pre, model.norm(feat.mean((2, 3))))
        torch.testing.assert_close(model.head(pre), model(x))
    assert pre.shape == (2, model.head_hidden_size)
    model.reset_classifier(0, '')
    with torch.no_grad():
        torch.testing.assert_close(model(x), feat)


@pytest.mark.slow  # compiling takes seconds (aot_eager) to minutes (inductor)
@pytest.mark.parametrize('backend', ['aot_eager', 'inductor'])
@pytest.mark.parametrize('name', VARIANTS)
def test_compile_fullgraph_equals_eager(name, backend, new_graphs):
    """One graph (fullgraph=True: no graph break) for eval and training; aot_eager checks the capture
    and the autograd graph, inductor (slow: minutes of C++ compilation) the generated kernels."""
    model = timm.create_model(name, depths=(1, 1, 1, 1), base_dim=16, num_classes=10, layer_scale_init_value=1.0)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.eval()(x)
        torch.testing.assert_close(compiled(x), ref, rtol=1e-4, atol=1e-4)
    model.train()
    model(x).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled(x).square().mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-3, atol=1e-5, msg=n)


@pytest.mark.slow  # compiling takes seconds (aot_eager) to minutes (inductor)
@pytest.mark.parametrize('backend', ['aot_eager', 'inductor'])
def test_compile_blocks_equals_eager(backend, new_graphs):
    """models.compile_blocks (regional compilation, main.py --compile blocks): every HorBlock compiled
    in place with fullgraph=True; blocks of one kind share a graph (stage 2's two blocks: one), the
    state dict keeps its keys, training (also with gradient checkpointing) and evaluation give eager's
    numbers, and no graph falls back to eager at the 8-graph default recompile limit."""
    kw = dict(depths=(1, 1, 2, 1), base_dim=16, num_classes=10, layer_scale_init_value=1.0,
              gf_sizes=(None, None, (5, 3), (3, 2)))
    model, ref = timm.create_model('hornet_tiny_gf', **kw), timm.create_model('hornet_tiny_gf', **kw)
    ref.load_state_dict(model.state_dict())
    assert models.compile_blocks(model, backend=backend) is model
    assert list(model.state_dict()) == list(ref.state_dict())
    with pytest.raises(ValueError, match='no HorBlock'):
        models.compile_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    x = torch.randn(4, 3, 64, 64)
    for grad_ckpt in (False, True):  # checkpointing recomputes through the same graphs
        model.set_grad_checkpointing(grad_ckpt)
        ref.set_grad_checkpointing(grad_ckpt)
        model.train()(x).square().mean().backward()
        ref.train()(x).square().mean().backward()
        for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=n)
            p.grad = q.grad = None
        assert new_graphs() == 4  # 4 block kinds
    batches = (6, 3) if backend == 'aot_eager' else (6,)
    with torch.no_grad():
        for b in batches:
            xb = torch.randn(b, 3, 64, 64)
            torch.testing.assert_close(model.eval()(xb), ref.eval()(xb), rtol=1e-4, atol=1e-4)
    # past the default limit of 8: each graph compiled, none left to eager
    assert new_graphs() == 4 + 4 * len(batches)


# ---------------------------------------------------------------- optimized model vs reference
@pytest.mark.parametrize('name', VARIANTS)
@pytest.mark.parametrize('hw', [(64, 64), (72, 104)])
def test_optimized_model_equals_reference_formulation(name, hw):
    from benchmarks.reference_hornet import ReferenceHorNet, reference_from
    model = timm.create_model(name, depths=(1, 1, 2, 1), base_dim=16, num_classes=10, layer_scale_init_value=1.0,
                              gf_sizes=(None, None, (5, 3), (3, 2)) if name.endswith('gf') else (None,) * 4)
    with torch.no_grad():  # non-trivial norms, filters and biases
        for n, p in model.named_parameters():
            if n.endswith(('bias', 'complex_weight')) or 'norm' in n:
                p.add_(torch.randn_like(p) * 0.3)
    ref = reference_from(model)  # strict load of the same state dict
    assert isinstance(ref, ReferenceHorNet) and list(ref.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        out, expected = model.eval()(x), ref.eval()(x)
    assert rel_err(out, expected) < 1e-5
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    # training step: same loss, same gradients
    model.train()(x).square().mean().backward()
    ref.train()(x).square().mean().backward()
    ref_grads = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        assert rel_err(p.grad, ref_grads[n].grad) < 1e-4, n


@pytest.mark.parametrize('name', VARIANTS)
def test_default_layout_is_channels_last_inside(name):
    """The speed defaults: an NCHW input runs channels_last inside (free permutes around the norms and
    the channels-last matrix products), and the outputs keep NCHW shapes."""
    model = small(name).eval()
    x = torch.randn(2, 3, 64, 64)
    seen = []
    hooks = [blk.register_forward_hook(lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)))
             for stage in model.stages for blk in stage]
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
    for h in hooks:
        h.remove()
    assert seen == [True] * 4
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
    # a GnConv given a plain NCHW tensor computes the same numbers
    g = model.stages[3][0].gnconv
    z = torch.randn(2, 128, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(g(z), g(z.contiguous(memory_format=torch.channels_last)), rtol=1e-5, atol=1e-6)


def test_pretrained_cfgs_preprocess_as_evaluation():
    """Every variant's pretrained cfg (the 384 px ones too: ``crop_mode='squash'``, the whole image
    resized to a square) gives with timm's ``create_transform`` exactly the tensor of
    ``datasets.eval_transform`` at its input size, for a wide, a tall and a small image."""
    import numpy as np
    from PIL import Image

    import datasets
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((500, 300), (200, 450),
                                                                                           (40, 30))]
    for name in LAYOUT:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        size = cfg['input_size'][-1]
        assert cfg['crop_mode'] == ('squash' if size >= 384 else 'center')
        hub = timm.data.create_transform(**timm.data.resolve_data_config({}, pretrained_cfg=cfg))
        for img in images:
            assert torch.equal(hub(img), datasets.eval_transform(size)(img)), name
