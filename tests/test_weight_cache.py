"""The inference weight cache of the lean (CUDA) path (models/ops.py, ``weight_cache``): run on CPU with
``cuda_path()`` forcing the lean path, under CPU bf16 autocast. Whatever happens to the parameters
between forwards, a cached forward equals the uncached one exactly."""
import contextlib

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import ops
from models.ops import clear_weight_cache, cuda_path, weight_cache


def _model(name='hornet_tiny_gf'):
    torch.manual_seed(0)
    model = timm.create_model(name, depths=(1, 1, 1, 1), base_dim=16, num_classes=10, layer_scale_init_value=0.5,
                              gf_sizes=(None, None, (5, 3), (3, 2)) if name.endswith('gf') else (None,) * 4)
    with torch.no_grad():  # non-trivial norms, filters, biases
        for n, p in model.named_parameters():
            if n.endswith(('bias', 'complex_weight')) or 'norm' in n:
                p.add_(torch.randn_like(p) * 0.3)
    return model.to(memory_format=torch.channels_last).eval()


X = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)


def _autocast(on: bool = True):
    return torch.autocast('cpu', dtype=torch.bfloat16) if on else contextlib.nullcontext()


def _forward(model, enabled=True, autocast=True, grad_mode=torch.no_grad):
    with cuda_path(), grad_mode(), weight_cache(enabled), _autocast(autocast):
        return model(X)


def _entries(model) -> int:
    return sum(len(ops._cache_entries(p)) for p in model.parameters())


def _assert_fresh(model, autocast=True, grad_mode=torch.no_grad):
    """The cached forward equals the uncached one bit for bit."""
    out = _forward(model, autocast=autocast, grad_mode=grad_mode)
    torch.testing.assert_close(out, _forward(model, enabled=False, autocast=autocast), rtol=0, atol=0)
    return out


@pytest.mark.parametrize('name', ['hornet_tiny_7x7', 'hornet_tiny_gf'])
def test_warm_forward_equals_cold_and_reuses_the_casts(name):
    """The second forward reuses every entry the first made (no new entry, same tensors) and gives the
    same output as the first and as an uncached forward; nothing is stored on the CPU path."""
    model = _model(name)
    with torch.no_grad():
        model(X)  # the CPU path (folded weights) caches nothing
    assert _entries(model) == 0
    cold = _forward(model)
    n = _entries(model)
    # one entry per layer: per block norm1, proj_in, the mixer (7x7: its scaled weight and bias; GF:
    # pre-norm, local conv, filter, scaled post-norm), order - 1 pws, proj_out, gamma1, norm2, pwconv1,
    # pwconv2, gamma2 (orders 2..5); the 4 downsampling convs and norms, the final norm and the head
    assert n == 4 * 9 + (1 + 2 + 3 + 4) + 4 * 2 + 2 + (6 if name.endswith('gf') else 0)
    cached = [v for p in model.parameters() for v in ops._cache_entries(p).values()]
    warm = _forward(model)
    assert _entries(model) == n
    again = [v for p in model.parameters() for v in ops._cache_entries(p).values()]
    assert all(a[2] is b[2] for a, b in zip(cached, again, strict=True))
    torch.testing.assert_close(warm, cold, rtol=0, atol=0)
    torch.testing.assert_close(warm, _forward(model, enabled=False), rtol=0, atol=0)
    # without autocast there is nothing to cast; the scaled mixer weights are still kept
    _assert_fresh(model, autocast=False)


def test_cache_follows_parameter_changes():
    """After an optimizer step, ``load_state_dict``, an in-place op under no_grad, a dtype round trip
    (``half().float()``: new storages, same parameter objects and versions), a ``.data`` write
    followed by ``eval()`` or ``clear_weight_cache``, and an inference tensor put in as ``.data``, the
    cached forward equals the uncached one."""
    model = _model()
    first = _assert_fresh(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with cuda_path(), _autocast():  # a step without leaving eval mode: only _version tells
        model(X).float().square().mean().backward()
    opt.step()
    after_step = _assert_fresh(model)
    assert not torch.equal(after_step, first)
    model.load_state_dict(_model('hornet_tiny_gf').state_dict() | {'head.bias': torch.ones(10)})
    _assert_fresh(model)
    with torch.no_grad():
        model.stages[2][0].gnconv.dwconv.complex_weight.mul_(-1)
        model.stages[0][0].gamma1.mul_(3)
    _assert_fresh(model)
    model.half().float()
    _assert_fresh(model)
    # a write through .data has its own version counter: the cache cannot see it until cleared
    model.stages[1][0].pwconv1.weight.data.mul_(2)
    model.eval()
    _assert_fresh(model)
    model.stages[3][0].gnconv.proj_in.bias.data.add_(1)
    clear_weight_cache(model)
    _assert_fresh(model)
    with torch.inference_mode():  # a source without a version counter is never cached
        replacement = model.stages[0][0].pwconv2.weight * 2
    model.stages[0][0].pwconv2.weight.data = replacement
    _assert_fresh(model)
    _assert_fresh(model)
    _assert_fresh(model, grad_mode=torch.inference_mode)


def test_nothing_cached_with_grad_enabled_and_gradients_unchanged():
    """With grad enabled nothing is stored (and earlier entries are not used): the output and every
    parameter gradient equal those with the cache switched off; training mode clears the cache."""
    model = _model()
    _forward(model)
    assert _entries(model) > 0

    def grads(enabled):
        model.zero_grad()
        out = _forward(model, enabled=enabled, grad_mode=torch.enable_grad)
        out.float().square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]
    clear_weight_cache(model)
    out, g = grads(True)
    assert _entries(model) == 0
    _forward(model)  # entries now exist; a grad-enabled forward ignores them
    out2, g2 = grads(True)
    ref, gref = grads(False)
    for a in (out, out2):
        torch.testing.assert_close(a, ref, rtol=0, atol=0)
    for a, b, c in zip(g, g2, gref, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
        torch.testing.assert_close(b, c, rtol=0, atol=0)
    model.train()
    assert _entries(model) == 0


def test_cache_stays_off_state_dict_parameters_and_can_be_switched_off():
    """A cached forward leaves ``state_dict`` (keys and values), ``parameters()`` and ``buffers()``
    as they were; ``weight_cache(enabled=False)`` stores nothing; ``clear_weight_cache()`` empties it."""
    model = _model()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    n_params, n_buffers = len(list(model.parameters())), len(list(model.buffers()))
    _forward(model, enabled=False)
    assert _entries(model) == 0
    _forward(model)
    _forward(model)
    assert _entries(model) > 0
    after = model.state_dict()
    assert list(after) == list(sd)
    for k, v in sd.items():
        assert torch.equal(after[k], v), k
    assert (len(list(model.parameters())), len(list(model.buffers()))) == (n_params, n_buffers)
    clear_weight_cache()
    assert _entries(model) == 0


_OPS = st.sampled_from(['forward', 'forward_fp32', 'inference', 'step', 'load', 'mul', 'data_eval', 'data_clear',
                        'roundtrip', 'grad_forward'])


@settings(max_examples=8, suppress_health_check=[HealthCheck.too_slow])
@given(ops_=st.lists(_OPS, min_size=1, max_size=6), seed=st.integers(0, 2 ** 16))
def test_any_sequence_of_updates_and_forwards_matches_uncached(ops_, seed):
    """Whatever sequence of forwards (bf16 autocast or not, no_grad, inference_mode, grad enabled) and
    parameter changes (optimizer step, load_state_dict, in-place op, dtype round trip, ``.data`` write
    then eval() or clear_weight_cache) runs, every cached forward equals the uncached one exactly."""
    model = _model('hornet_tiny_gf' if seed % 2 else 'hornet_tiny_7x7')
    gen = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for op in ops_:
        p = params[int(torch.randint(len(params), (1,), generator=gen))]
        if op == 'forward_fp32':
            _assert_fresh(model, autocast=False)
        elif op == 'inference':
            _assert_fresh(model, grad_mode=torch.inference_mode)
        elif op == 'grad_forward':
            _assert_fresh(model, grad_mode=torch.enable_grad)
        elif op == 'step':
            opt.zero_grad()
            with cuda_path(), _autocast():
                model(X).float().square().mean().backward()
            opt.step()
        elif op == 'load':
            model.load_state_dict({k: v + torch.randn(v.shape, generator=gen).to(v.dtype) * 0.01
                                   for k, v in model.state_dict().items()})
        elif op == 'mul':
            with torch.no_grad():
                p.mul_(1.5)
        elif op in ('data_eval', 'data_clear'):
            p.data.add_(0.25)
            model.eval() if op == 'data_eval' else clear_weight_cache(model)
        elif op == 'roundtrip':
            model.half().float()
        _assert_fresh(model)
