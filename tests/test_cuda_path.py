"""The lean CUDA code path of the layers (models/ops.py, ``folds_weights``): the same numbers as the
CPU path and the reference formulation, run on CPU tensors, and the ops it runs on fake CUDA tensors."""
import contextlib

import pytest
import timm
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from benchmarks.gpu_roofline import cuda_autocast, eager_cuda_paths
from helpers import rel_err
from models import HorBlock
from models.ops import cuda_path, folds_weights


def _model(name, **kwargs):
    model = timm.create_model(name, depths=(1, 1, 2, 1), base_dim=16, num_classes=10, layer_scale_init_value=1.0,
                              gf_sizes=(None, None, (5, 3), (3, 2)) if name.endswith('gf') else (None,) * 4,
                              **kwargs)
    with torch.no_grad():  # non-trivial norms, filters, biases and layer scales
        for n, p in model.named_parameters():
            if n.endswith(('bias', 'complex_weight')) or 'norm' in n or 'gamma' in n:
                p.add_(torch.randn_like(p) * 0.3)
    return model.to(memory_format=torch.channels_last)


def test_cuda_path_switch():
    """CPU tensors fold, other devices do not; ``cuda_path()`` forces the CUDA path and restores."""
    x = torch.zeros(1)
    assert folds_weights(x) and not folds_weights(torch.zeros(1, device='meta'))
    with cuda_path():
        assert not folds_weights(x)
    assert folds_weights(x)


def test_gf_filter_stays_dense_under_channels_last():
    """``model.to(memory_format=torch.channels_last)`` leaves the GF filters dense (the FFT product would
    copy a channels-last filter in every forward), the same parameter objects with the same values."""
    model = _model('hornet_tiny_gf')
    filters = [m.complex_weight for m in model.modules() if hasattr(m, 'complex_weight')]
    assert filters and all(f.is_contiguous() for f in filters)
    before = [f.detach().clone() for f in filters]
    model.to(memory_format=torch.channels_last).to(torch.float64).float()
    after = [m.complex_weight for m in model.modules() if hasattr(m, 'complex_weight')]
    for a, f, b in zip(after, filters, before, strict=True):
        assert a is f and a.is_contiguous() and torch.equal(a, b)


@pytest.mark.parametrize('name', ['hornet_tiny_7x7', 'hornet_tiny_gf'])
def test_cuda_path_equals_cpu_path_and_reference(name):
    """Forward (eval) and every parameter gradient (train) of the CUDA path equal the CPU path's and
    the plain reference formulation's (tolerances of test_optimized_model_equals_reference_formulation)."""
    from benchmarks.reference_hornet import reference_from
    model = _model(name)
    ref = reference_from(model)
    x = torch.randn(2, 3, 64, 72).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        cpu, expected = model.eval()(x), ref.eval()(x)
        with cuda_path():
            lean = model(x)
    for out in (lean, cpu):
        assert rel_err(out, expected) < 1e-5
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    torch.testing.assert_close(lean, cpu, rtol=1e-5, atol=1e-5 * cpu.abs().max().item())

    def grads(run):
        model.zero_grad()
        run().square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}
    cpu_grads = grads(lambda: model.train()(x))
    with cuda_path():
        lean_grads = grads(lambda: model.train()(x))
    ref.train()(x).square().mean().backward()
    ref_grads = dict(ref.named_parameters())
    for n, g in lean_grads.items():
        assert rel_err(g, ref_grads[n].grad) < 1e-4, n
        assert rel_err(g, cpu_grads[n]) < 1e-4, n


def test_cuda_path_with_stochastic_depth_equals_cpu_path():
    """With stochastic depth in training (the residual add outside the products), the same draws give
    the same output and gradients on both paths."""
    model = _model('hornet_tiny_gf', drop_path_rate=0.5).train()
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    outs = []
    for lean in (False, True):
        torch.manual_seed(0)
        model.zero_grad()
        with cuda_path() if lean else torch.enable_grad():
            out = model(x)
        out.square().mean().backward()
        outs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (a, ga), (b, gb) = outs
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())
    for u, v in zip(gb, ga, strict=True):
        assert rel_err(u, v) < 1e-4


def test_cuda_path_bf16_autocast_stays_bf16_and_close():
    """Under bf16 autocast the CUDA path's norms return bf16 (no float32 round trip) and the logits
    stay close to float32 (the CPU autocast test's tolerance)."""
    model = _model('hornet_tiny_gf').eval()
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    blk = model.stages[2][0]
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
             for m in (blk.norm1, blk.norm2, blk.gnconv.dwconv.pre_norm, blk.gnconv.dwconv)]
    with torch.no_grad(), cuda_path():
        ref = model(x)
        seen.clear()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
    for h in hooks:
        h.remove()
    assert seen == [torch.bfloat16] * 4
    assert torch.isfinite(out).all() and rel_err(out.float(), ref) < 1.5e-2


# Autocast casts (``_to_copy`` to another dtype) per HorBlock on fake CUDA tensors under bf16 autocast,
# by mixer and gnConv order: 2 per weight and bias of each product and norm, 1 per layer scale, and for
# GF the float32 input of the FFT. The CPU formulation on CUDA (folded weights, float32 norms) had
# 19 / 23 (7x7) and 24 / 30 (GF), 5 to 13 of them full activations. Above this, a change brought a
# cast back.
CASTS_PER_BLOCK = {'dwconv': {2: 18, 4: 22}, 'gf': {2: 22, 4: 26}}
# The same in a warm forward (grad disabled, traced after a first forward): the weight cache
# (models.ops.weight_cache) keeps every weight's cast, so only the GF filter's float32 FFT input is left.
WARM_CASTS_PER_BLOCK = {'dwconv': {2: 0, 4: 0}, 'gf': {2: 1, 4: 1}}


def _fake_cuda_graph(module, x_shape, warm=False):
    named = dict(module.named_parameters())
    named.update(module.named_buffers())
    with FakeTensorMode() as fake:
        params = {k: fake.from_tensor(v).to('cuda').detach() for k, v in named.items()}
        # bf16 like a block's input inside the net (the output of an autocast conv)
        x = torch.randn(x_shape, device='cuda', dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)

    def run(params, x):
        with cuda_autocast(torch.bfloat16):
            return torch.func.functional_call(module, params, (x,))
    # warm: as the cost model's --warm, a first forward untraced; the trace (a dispatch mode, where the
    # cache is off) is made to look like eager CUDA
    with fake, torch.no_grad(), eager_cuda_paths() if warm else contextlib.nullcontext():
        if warm:
            run(params, x)
        return make_fx(run)(params, x)


def _casts(graph):
    calls = [n for n in graph.graph.nodes if n.op == 'call_function']
    return [n for n in calls if n.target == torch.ops.aten._to_copy.default and 'dtype' in n.kwargs
            and n.kwargs['dtype'] != n.args[0].meta['val'].dtype]


@pytest.mark.parametrize('mixer', ['dwconv', 'gf'])
@pytest.mark.parametrize('order', [2, 4])
def test_fake_cuda_block_runs_plain_ops_in_bf16(mixer, order):
    """A HorBlock traced on fake CUDA tensors under bf16 autocast: no custom or oneDNN op, the layer
    scales on the residual add (no folded weight), every product and norm in bf16, at most
    ``CASTS_PER_BLOCK`` casts and no activation cast but the FFT's."""
    kw = dict(mixer=mixer, filter_size=(7, 4)) if mixer == 'gf' else dict(mixer=mixer)
    blk = HorBlock(32, order=order, scale=1 / 3, **kw).eval()
    graph = _fake_cuda_graph(blk, (2, 32, 7, 7))
    calls = [n for n in graph.graph.nodes if n.op == 'call_function']
    names = [str(n.target) for n in calls]
    assert not [t for t in names if 'hornet' in t or 'mkldnn' in t]
    assert names.count('aten.addcmul.default') == 2
    casts = _casts(graph)
    assert len(casts) <= CASTS_PER_BLOCK[mixer][order]
    # of activations, only the FFT's float32 input (GF); every other cast is a weight's
    activations = [n for n in casts if n.meta['val'].shape[0] == 2]
    assert [n.kwargs['dtype'] for n in activations] == ([torch.float32] if mixer == 'gf' else [])
    for n in calls:
        if n.target in (torch.ops.aten.native_layer_norm.default, torch.ops.aten.addmm.default,
                        torch.ops.aten.convolution.default, torch.ops.aten.addcmul.default):
            out = n.meta['val'][0] if isinstance(n.meta['val'], tuple) else n.meta['val']
            assert out.dtype == torch.bfloat16, n


@pytest.mark.slow
@pytest.mark.parametrize('mixer', ['dwconv', 'gf'])
def test_cuda_path_compiles_fullgraph(mixer):
    """The CUDA path of a HorBlock compiles as one graph (torch.compile on CUDA takes it) and equals eager,
    forward and gradients."""
    kw = dict(mixer=mixer, filter_size=(7, 4)) if mixer == 'gf' else dict(mixer=mixer)
    blk = HorBlock(32, order=3, scale=1 / 3, layer_scale_init_value=0.5, **kw)
    x = torch.randn(2, 32, 7, 7).contiguous(memory_format=torch.channels_last)
    with cuda_path():
        ref = blk(x)
        ref_grads = torch.autograd.grad(ref.square().sum(), list(blk.parameters()))
        out = torch.compile(blk, backend='aot_eager', fullgraph=True)(x)
        grads = torch.autograd.grad(out.square().sum(), list(blk.parameters()))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('mixer', ['dwconv', 'gf'])
@pytest.mark.parametrize('order', [2, 4])
def test_fake_cuda_warm_block_casts_no_weight(mixer, order):
    """A HorBlock's second forward on fake CUDA tensors under bf16 autocast with grad disabled: the
    weight cache leaves no weight cast, no scale product and no filter copy (``WARM_CASTS_PER_BLOCK``:
    only the GF filter's float32 FFT input); the cold trace of the same block keeps its casts."""
    kw = dict(mixer=mixer, filter_size=(7, 4)) if mixer == 'gf' else dict(mixer=mixer)
    blk = HorBlock(32, order=order, scale=1 / 3, **kw).eval().to(memory_format=torch.channels_last)
    warm = _fake_cuda_graph(blk, (2, 32, 7, 7), warm=True)
    casts = _casts(warm)
    assert len(casts) == WARM_CASTS_PER_BLOCK[mixer][order]
    assert all(n.meta['val'].shape[0] == 2 for n in casts)  # activations only
    names = [str(n.target) for n in warm.graph.nodes if n.op == 'call_function']
    assert not [t for t in names if 'foreach' in t or t == 'aten.clone.default']
    assert len(_casts(_fake_cuda_graph(blk, (2, 32, 7, 7)))) == CASTS_PER_BLOCK[mixer][order]
