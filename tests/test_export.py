"""export.py: ONNX and torch.export of small 7x7 and GF models, checked against eager."""
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

import export
from conftest import SMALL, SMALL_ARGS

SIZE = 64


def _small_checkpoint(tmp_path, name):
    """A small random model and its checkpoint file (training layout, with an args namespace)."""
    import argparse
    model = timm.create_model(name, **SMALL, num_classes=10).eval()
    path = tmp_path / f'{name}.pth'
    torch.save({'model': model.state_dict(), 'epoch': 1, 'args': argparse.Namespace(lr=1e-3)}, path)
    return model, str(path)


def _printed_diffs(out):
    return [(int(b), float(a), float(r)) for b, a, r in
            re.findall(r'verify batch (\d+): max abs diff (\S+), max rel diff (\S+) \(ok', out)]


def _rel(ref, out):
    return float(np.abs(ref - out).max() / np.abs(ref).max())


@pytest.mark.slow
@pytest.mark.parametrize('name', ['hornet_tiny_7x7', 'hornet_tiny_gf'])
def test_onnx_dynamic_batch_matches_eager(tmp_path, capsys, name):
    model, ckpt = _small_checkpoint(tmp_path, name)
    out = str(tmp_path / 'm.onnx')
    rc = export.main(['--model', name, '--checkpoint', ckpt, '--input_size', str(SIZE), '--format', 'onnx',
                      '--dynamic_batch', '--output', out] + SMALL_ARGS)
    printed = _printed_diffs(capsys.readouterr().out)
    assert rc == 0
    assert [b for b, _, _ in printed] == [1, 3] and all(r < 1e-4 for _, _, r in printed)

    graph = onnx.load(out).graph
    ops = {n.op_type for n in graph.node}
    # the GF filter became plain matrix products: no FFT/DFT op left for runtimes to support
    assert 'DFT' not in ops and 'MatMul' in ops
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]

    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        x = torch.randn(batch, 3, SIZE, SIZE, generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()  # eager GF uses torch.fft
        got = session.run(None, {'input': x.numpy()})[0]
        assert got.shape == (batch, 10)
        assert _rel(ref, got) < 1e-4


@pytest.mark.slow
def test_onnx_static_export_size(tmp_path, capsys):
    model, ckpt = _small_checkpoint(tmp_path, 'hornet_tiny_7x7')
    out = str(tmp_path / 'static.onnx')
    assert export.main(['--model', 'hornet_tiny_7x7', '--checkpoint', ckpt, '--input_size', str(SIZE),
                        '--format', 'onnx', '--output', out] + SMALL_ARGS) == 0
    assert [b for b, _, _ in _printed_diffs(capsys.readouterr().out)] == [1]
    dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, SIZE, SIZE]
    x = torch.randn(1, 3, SIZE, SIZE)
    got = ort.InferenceSession(out, providers=['CPUExecutionProvider']).run(None, {'input': x.numpy()})[0]
    with torch.no_grad():
        assert _rel(model(x).numpy(), got) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize('name', ['hornet_tiny_7x7', 'hornet_tiny_gf'])
def test_torch_export_dynamic_batch_matches_eager(tmp_path, capsys, name):
    model, ckpt = _small_checkpoint(tmp_path, name)
    out = str(tmp_path / 'm.pt2')
    rc = export.main(['--model', name, '--checkpoint', ckpt, '--input_size', str(SIZE),
                      '--format', 'torch_export', '--dynamic_batch', '--output', out] + SMALL_ARGS)
    printed = _printed_diffs(capsys.readouterr().out)
    assert rc == 0
    assert [b for b, _, _ in printed] == [1, 3] and all(r < 1e-4 for _, _, r in printed)

    program = torch.export.load(out)
    # torch.export traces torch.fft as is (inside the autocast-disabled submodule), so GF keeps the FFT
    ops = {str(n.target) for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)
           for n in m.graph.nodes if n.op == 'call_function'}
    assert ({'aten.fft_rfft2.default', 'aten.fft_irfft2.default'} <= ops) == (name == 'hornet_tiny_gf')
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        x = torch.randn(batch, 3, SIZE, SIZE, generator=gen)
        with torch.no_grad():
            ref, got = model(x).numpy(), program.module()(x).numpy()
        assert got.shape == (batch, 10)
        assert _rel(ref, got) < 1e-4


def test_verify_flags_a_mismatch(monkeypatch):
    model = timm.create_model('hornet_tiny_7x7', **SMALL, num_classes=10).eval()

    def runner(path, fmt):  # an "exported" model that is 0.1% off
        return lambda x: model(torch.from_numpy(x)).detach().numpy() * 1.001
    monkeypatch.setattr(export, 'load_runner', runner)
    (res,) = export.verify(model, 'unused', 'onnx', 32, (2,), rtol=1e-4, atol=0)
    assert not res['ok'] and res['max_rel'] == pytest.approx(1e-3, rel=0.05)
    (res,) = export.verify(model, 'unused', 'onnx', 32, (2,), rtol=1e-2, atol=0)
    assert res['ok']


def test_parse_model_kwargs():
    assert export.parse_model_kwargs(['depths=1,1,1,1', 'base_dim=16', 'gf_sizes=[None,None,(6,4),(3,2)]',
                                      'global_pool=avg']) == dict(
        depths=(1, 1, 1, 1), base_dim=16, gf_sizes=[None, None, (6, 4), (3, 2)], global_pool='avg')
    with pytest.raises(ValueError, match='key=value'):
        export.parse_model_kwargs(['depths'])


def test_usage_errors(tmp_path, capsys):
    _, ckpt = _small_checkpoint(tmp_path, 'hornet_tiny_7x7')
    base = ['--input_size', str(SIZE), '--format', 'onnx', '--output', str(tmp_path / 'x.onnx')] + SMALL_ARGS
    # a checkpoint with 10 classes never gets a fresh 1000-class head
    assert export.main(['--model', 'hornet_tiny_7x7', '--checkpoint', ckpt, '--num_classes', '1000'] + base) == 2
    assert 'has 10 classes' in capsys.readouterr().err
    assert export.main(['--model', 'hornet_tiny', '--checkpoint', ckpt] + base) == 2
    assert 'hornet_tiny_gf' in capsys.readouterr().err  # lists the valid names
    assert export.main(['--model', 'hornet_tiny_gf', '--checkpoint', ckpt] + base) == 2  # wrong variant
    assert 'does not fit' in capsys.readouterr().err
    assert export.main(['--model', 'hornet_tiny_7x7', '--format', 'torch_export',
                        '--output', str(tmp_path / 'x.onnx')]) == 2
    assert '.pt2' in capsys.readouterr().err
    assert not (tmp_path / 'x.onnx').exists()
