"""export.py: ONNX and torch.export of small 7x7 and GF models, checked against eager."""
import functools
import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import export
from helpers import SMALL, SMALL_ARGS

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


# ---------------------------------------------------------------- hub folder
def _hub_args(ckpt, out, *extra):
    return ['--model', 'hornet_tiny_gf', '--checkpoint', ckpt, '--format', 'hub', '--output', str(out),
            *SMALL_ARGS, *extra]


def test_hub_folder_round_trip_through_timm_local_dir(tmp_path, capsys):
    """config.json + model.safetensors + README.md load with timm's local-dir: source, same logits."""
    import json
    model = timm.create_model('hornet_tiny_gf', **SMALL, num_classes=3).eval()
    names = ['n01440764', 'n01443537', 'n01484850']
    ckpt = tmp_path / 'checkpoint-best.pth'
    torch.save({'model': model.state_dict(), 'epoch': 7, 'max_accuracy': 81.5, 'label_names': names}, ckpt)
    out = tmp_path / 'hub'
    assert export.main(_hub_args(str(ckpt), out, '--input_size', '64')) == 0
    assert 'verify local-dir load: max abs diff 0.000e+00 (ok)' in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['architecture'] == 'hornet_tiny_gf' and cfg['num_classes'] == 3 and cfg['label_names'] == names
    assert cfg['model_args']['depths'] == [1, 1, 1, 1] and cfg['model_args']['base_dim'] == 16
    pc = cfg['pretrained_cfg']
    assert pc['input_size'] == [3, 64, 64] and pc['crop_pct'] == 0.875 and pc['interpolation'] == 'bicubic'
    assert pc['mean'] == list(timm.data.IMAGENET_DEFAULT_MEAN) and pc['std'] == list(timm.data.IMAGENET_DEFAULT_STD)
    assert 'url' not in pc and 'origin_url' not in pc  # not the released weights
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert float((loaded(x) - model(x)).abs().max()) <= 1e-6
    assert loaded.pretrained_cfg['label_names'] == names
    card = (out / 'README.md').read_text()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert f'Parameters: {params:.2f} M' in card and 'at 64x64' in card
    assert 'Top-1 accuracy logged with the checkpoint (epoch 7): 81.50%' in card
    assert 'license: mit' in card and 'HorNet: Efficient High-Order Spatial Interactions' in card
    assert "timm.create_model('local-dir:" in card


def test_hub_folder_never_overwrites_unasked_or_the_input(tmp_path, capsys):
    _, ckpt = _small_checkpoint(tmp_path, 'hornet_tiny_gf')
    out = tmp_path / 'hub'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    (out / 'README.md').write_text('old card')
    assert export.main(_hub_args(ckpt, out)) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'already holds README.md; pass --overwrite' in err
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'notes.txt']
    assert export.main(_hub_args(ckpt, out, '--overwrite')) == 0
    assert (out / 'notes.txt').read_text() == 'mine' and (out / 'README.md').read_text() != 'old card'
    assert 'Accuracy: not logged with the checkpoint' in (out / 'README.md').read_text()
    # the input checkpoint under one of the output names is never replaced, --overwrite or not
    inside = out / 'model.safetensors'
    before = inside.read_bytes()
    capsys.readouterr()
    assert export.main(_hub_args(str(inside), out, '--overwrite')) == 2
    assert 'would overwrite the input checkpoint' in capsys.readouterr().err
    assert inside.read_bytes() == before
    (tmp_path / 'file').write_text('x')
    assert export.main(_hub_args(ckpt, tmp_path / 'file')) == 2
    assert 'writes a folder' in capsys.readouterr().err


# ---------------------------------------------------------------- hub preprocessing = evaluation's

def _hub_transform(pretrained_cfg: dict):
    """What a timm user of the hub folder preprocesses with (the model card's recipe)."""
    return timm.data.create_transform(**timm.data.resolve_data_config({}, pretrained_cfg=pretrained_cfg))


def _random_image(rng: np.random.Generator, width: int, height: int):
    from PIL import Image
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_hub_folder_preprocesses_as_evaluation_at_384_and_224(tmp_path):
    """A hub folder exported at 384 px says ``crop_mode='squash'`` with ``crop_pct`` 1.0 (the whole image
    resized to a square, as our evaluation; timm's default centre crop of the short side would cut
    the sides of a 500 x 300 image), one at 224 px a centre crop of the short side resized to 256;
    timm's transform from the loaded folder gives exactly ``datasets.eval_transform``'s tensor."""
    import json

    import datasets
    model = timm.create_model('hornet_tiny_7x7', **SMALL).eval()
    ckpt = tmp_path / 'checkpoint.pth'
    torch.save({'model': model.state_dict()}, ckpt)
    img = _random_image(np.random.default_rng(0), 500, 300)
    for size, crop_pct, crop_mode in ((384, 1.0, 'squash'), (224, 0.875, 'center')):
        out = tmp_path / f'hub{size}'
        argv = ['--model', 'hornet_tiny_7x7', '--checkpoint', str(ckpt), '--format', 'hub', '--output', str(out),
                '--input_size', str(size), *SMALL_ARGS]
        assert export.main(argv) == 0
        pc = json.loads((out / 'config.json').read_text())['pretrained_cfg']
        assert (pc['input_size'], pc['crop_pct'], pc['crop_mode'], pc['interpolation']) == \
            ([3, size, size], crop_pct, crop_mode, 'bicubic')
        loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
        hub = timm.data.create_transform(**timm.data.resolve_data_config({}, model=loaded))(img)
        assert hub.shape == (3, size, size) and torch.equal(hub, datasets.eval_transform(size)(img))


@pytest.mark.parametrize('saved', ['dict', 'namespace', 'safetensors', 'no flags'])
def test_hub_config_takes_mean_and_std_from_the_checkpoint(tmp_path, saved):
    """A checkpoint trained with ``--imagenet_default_mean_and_std false`` (main.py's ``args`` dict,
    an older checkpoint's namespace, main.py's safetensors metadata) exports a config.json whose
    timm transform is exactly ``datasets.eval_transform(size, None, False)`` (Inception's mean/std);
    one without the flag, ImageNet's (main.py's default). validate.py reads the same flag."""
    import argparse

    import datasets
    import run_dir
    import validate
    model = _small_model()
    path = str(tmp_path / ('ckpt.safetensors' if saved == 'safetensors' else 'ckpt.pth'))
    flags = {'imagenet_default_mean_and_std': False, 'lr': 1e-3}
    if saved == 'safetensors':
        run_dir.save_safetensors(model.state_dict(), path, {'imagenet_default_mean_and_std': 'false'})
    else:
        args = {'dict': flags, 'namespace': argparse.Namespace(**flags), 'no flags': {'lr': 1e-3}}[saved]
        torch.save({'model': model.state_dict(), 'args': args}, path)
    expected = saved == 'no flags'
    assert export.main(_hub_args(path, tmp_path / 'hub', '--input_size', '64')) == 0
    pretrained_cfg = json.loads((tmp_path / 'hub' / 'config.json').read_text())['pretrained_cfg']
    img = _random_image(np.random.default_rng(0), 90, 70)
    hub = _hub_transform(pretrained_cfg)(img)
    assert torch.equal(hub, datasets.eval_transform(64, None, expected)(img))
    assert not torch.equal(hub, datasets.eval_transform(64, None, not expected)(img))
    assert validate.trained_mean_and_std(path, model) is expected
    loaded = timm.create_model(f'local-dir:{tmp_path / "hub"}', pretrained=True)
    assert validate.trained_mean_and_std(f'local-dir:{tmp_path / "hub"}', loaded) is expected
    assert validate.trained_mean_and_std('', model) is True


def test_hub_export_preprocesses_as_predict_for_a_checkpoint(tmp_path):
    """A checkpoint trained at 64 px with ``--crop_pct 0.95`` and Inception's mean/std: without
    ``--input_size``, the hub config's timm transform is exactly predict.py's for that checkpoint
    (its size, crop and mean/std), which is ``datasets.eval_transform(64, 0.95, False)``."""
    import datasets
    import predict
    model = _small_model()
    path = str(tmp_path / 'ckpt.pth')
    flags = {'imagenet_default_mean_and_std': False, 'input_size': 64, 'crop_pct': 0.95}
    torch.save({'model': model.state_dict(), 'args': flags}, path)
    assert export.main(_hub_args(path, tmp_path / 'hub')) == 0
    pretrained_cfg = json.loads((tmp_path / 'hub' / 'config.json').read_text())['pretrained_cfg']
    assert pretrained_cfg['input_size'] == [3, 64, 64] and pretrained_cfg['crop_pct'] == 0.95
    img = _random_image(np.random.default_rng(1), 90, 70)
    hub = _hub_transform(pretrained_cfg)(img)
    assert torch.equal(hub, predict.eval_transform(model, flags)(img))
    assert torch.equal(hub, datasets.eval_transform(64, 0.95, False)(img))
    assert not torch.equal(hub, datasets.eval_transform(64, None, False)(img))


@settings(max_examples=20)
@given(size=st.integers(32, 512), images=st.lists(st.tuples(st.integers(1, 640), st.integers(1, 640)),
                                                  min_size=1, max_size=2), seed=st.integers(0, 2 ** 16))
def test_hub_config_preprocesses_as_evaluation_at_any_size(size, images, seed):
    """For every input size an export may have, timm's transform from the exported config.json turns
    any image into the same tensor as ``datasets.eval_transform(size)``."""
    import datasets
    pretrained_cfg = export.hub_config(_small_model(), size)['pretrained_cfg']
    hub, ours = _hub_transform(pretrained_cfg), datasets.eval_transform(size)
    rng = np.random.default_rng(seed)
    for width, height in images:
        img = _random_image(rng, width, height)
        a, b = hub(img), ours(img)
        assert a.shape == b.shape == (3, size, size)
        assert float((a - b).abs().max()) <= 1e-6


@functools.cache
def _small_model():
    return timm.create_model('hornet_tiny_gf', **SMALL)
