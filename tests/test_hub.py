"""Weights behind URLs (models/hub.py and ``pretrained=True``), served from a loopback HTTP server."""
import hashlib
import os

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.mmpretrain_hornet import to_mmpretrain_state_dict
from helpers import SMALL
from models import hub


def _save_named_by_hash(obj, folder, stem: str) -> str:
    """Save ``obj`` as ``stem-<sha256 prefix>.pth`` in ``folder`` (the torch hub naming); returns the name."""
    tmp = folder / 'tmp.pth'
    torch.save(obj, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    name = f'{stem}-{digest[:8]}.pth'
    tmp.rename(folder / name)
    return name


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """torch's hub cache under tmp_path (TORCH_HOME), no mirror set."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.delenv(hub.MIRROR_ENV, raising=False)
    return tmp_path / 'torch' / 'hub' / 'checkpoints'


def test_hash_prefix_from_file_name():
    assert hub.hash_prefix('hornet-tiny-gf_3rdparty_in1k_20220915-4c35a66b.pth') == '4c35a66b'
    assert hub.hash_prefix('https://x/y/resnet50-0676ba61.safetensors') == '0676ba61'
    assert hub.hash_prefix('hornet_tiny_gf.pth') is None
    assert hub.hash_prefix('model-best.pth') is None  # not hex
    assert hub.hash_prefix('ckpt-12ab.pth') is None  # too short to be a hash prefix


def test_pretrained_url_with_hash_loads_same_weights(loopback_server, hub_dir):
    base, folder, _ = loopback_server
    src = timm.create_model('hornet_tiny_gf', **SMALL).eval()
    name = _save_named_by_hash({'model': src.state_dict()}, folder, 'small')
    model = timm.create_model('hornet_tiny_gf', pretrained=True, pretrained_cfg_overlay=dict(url=f'{base}/{name}'),
                              **SMALL).eval()
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert sorted(os.listdir(hub_dir)) == [name]
    # a second load uses the cache: the server no longer has the file
    os.remove(folder / name)
    again = timm.create_model('hornet_tiny_gf', pretrained=True, pretrained_cfg_overlay=dict(url=f'{base}/{name}'),
                              **SMALL)
    assert torch.equal(again.head.weight, src.head.weight)


def test_mirror_env_replaces_release_base_mmpretrain_layout(loopback_server, hub_dir, monkeypatch):
    base, folder, _ = loopback_server
    src = timm.create_model('hornet_tiny_gf', **SMALL).eval()
    mm = {'meta': {}, 'state_dict': to_mmpretrain_state_dict(src.state_dict())}
    name = _save_named_by_hash(mm, folder, 'hornet-small_3rdparty_in1k')
    monkeypatch.setenv(hub.MIRROR_ENV, base + '/')
    model = timm.create_model('hornet_tiny_gf', pretrained=True,
                              pretrained_cfg_overlay=dict(url=hub.RELEASE_BASE + name), **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x), rtol=0, atol=0)
    assert os.listdir(hub_dir) == [name]


def test_wrong_hash_is_refused_and_nothing_cached(loopback_server, hub_dir, monkeypatch):
    base, folder, _ = loopback_server
    # the default config's released file name, served with other content through the mirror
    name = os.path.basename(timm.models.get_pretrained_cfg('hornet_tiny_gf.in1k').url)
    assert name == 'hornet-tiny-gf_3rdparty_in1k_20220915-4c35a66b.pth'
    torch.save({'state_dict': {}}, folder / name)
    monkeypatch.setenv(hub.MIRROR_ENV, base)
    with pytest.raises(hub.DownloadError) as e:
        timm.create_model('hornet_tiny_gf', pretrained=True, **SMALL)
    msg = str(e.value)
    assert '\n' not in msg and 'but its name says 4c35a66b' in msg and 'nothing was cached' in msg
    assert f'{base}/{name}' in msg
    assert os.listdir(hub_dir) == []


def test_interrupted_download_leaves_no_file(loopback_server, hub_dir):
    base, folder, cut = loopback_server
    (folder / 'big.pth').write_bytes(os.urandom(3 << 20))
    cut.add('big.pth')
    with pytest.raises(hub.DownloadError, match=r'stopped after 1572864 of 3145728 bytes; run again'):
        hub.cached_download(f'{base}/big.pth')
    assert os.listdir(hub_dir) == []
    cut.clear()  # the retry completes
    path = hub.cached_download(f'{base}/big.pth')
    assert path == str(hub_dir / 'big.pth') and os.path.getsize(path) == 3 << 20
    assert os.listdir(hub_dir) == ['big.pth']


def test_download_errors_are_one_line(loopback_server, hub_dir):
    base, _, _ = loopback_server
    with pytest.raises(hub.DownloadError, match=r'^cannot download .*/missing-0123abcd\.pth: HTTP 404'):
        hub.cached_download(f'{base}/missing-0123abcd.pth')
    with pytest.raises(hub.DownloadError, match='names no file'):
        hub.cached_download(f'{base}/')
    assert not hub_dir.exists() or os.listdir(hub_dir) == []


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000), flip=st.booleans(), n_hex=st.integers(8, 64))
def test_cache_holds_exactly_the_checked_files(loopback_server, tmp_path_factory, data, flip, n_hex):
    """Any content under a name carrying n hex digits of its sha256 arrives byte for byte; with one
    digit changed it is refused and the cache stays empty."""
    base, folder, _ = loopback_server
    digest = hashlib.sha256(data).hexdigest()[:n_hex]
    if flip:
        digest = digest[:-1] + ('0' if digest[-1] != '0' else '1')
    name = f'w-{digest}.bin'
    (folder / name).write_bytes(data)
    cache = tmp_path_factory.mktemp('cache')
    if flip:
        with pytest.raises(hub.DownloadError, match=f'but its name says {digest}; '):
            hub.cached_download(f'{base}/{name}', cache_dir=str(cache))
        assert os.listdir(cache) == []
    else:
        path = hub.cached_download(f'{base}/{name}', cache_dir=str(cache))
        assert open(path, 'rb').read() == data and os.listdir(cache) == [name]


@pytest.mark.slow
@pytest.mark.parametrize('source', ['url', 'safetensors'])
def test_every_reader_takes_urls_and_safetensors(source, loopback_server, hub_dir, data, trained, tmp_path, capsys):
    """A checkpoint given as an http(s) URL (checked into the hub cache) or as a .safetensors file reads
    like the .pth file in every entry point: main.py --eval --resume (the logged accuracy),
    --finetune (the same starting weights), export.py (a hub folder with the same logits), predict.py
    (the same top-1) and the OpenMMLab backbone's init_cfg."""
    import json

    import export
    import main as train_main
    import predict
    import run_dir
    from helpers import SMALL_ARGS, read_log, tiny_argv
    from models.mm_hornet import HorNetBackbone
    pth = os.path.join(trained, 'checkpoint-1.pth')
    ckpt = torch.load(pth, weights_only=True)
    if source == 'url':
        base, folder, _ = loopback_server
        src = f'{base}/' + _save_named_by_hash(ckpt, folder, 'run')
    else:
        src = str(tmp_path / 'run.safetensors')
        run_dir.save_safetensors(ckpt['model'], src, {'label_names': json.dumps(ckpt['label_names'])})

    stats = train_main.main(train_main.parse_args(tiny_argv(data, '', eval='true', resume=src)))
    assert stats['test_acc1'] == pytest.approx(read_log(trained)[-1]['test_acc1'])

    out = str(tmp_path / 'ft')  # lr 0, no weight decay: the first checkpoint holds the starting weights
    assert train_main.run(tiny_argv(data, out, finetune=src, epochs=1, lr=0, min_lr=0, weight_decay=0)) == 0
    started = torch.load(os.path.join(out, 'checkpoint-0.pth'), weights_only=True)['model']
    assert all(torch.equal(started[k], v) for k, v in ckpt['model'].items())

    hub_out = str(tmp_path / 'hub')
    assert export.main(['--model', 'hornet_tiny_gf', *SMALL_ARGS, '--input_size', '32', '--checkpoint', src,
                        '--format', 'hub', '--output', hub_out]) == 0
    model = timm.create_model(f'local-dir:{hub_out}', pretrained=True).eval()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt['model'].items())

    image = os.path.join(data, 'val', 'class_1', '000.png')
    capsys.readouterr()
    outputs = []
    for path in (pth, src):
        assert predict.main(['--model', 'hornet_tiny_gf', '--checkpoint', path, '--topk', '1', '--input_size', '32',
                             image,
                             '--model_kwargs', 'depths=1,1,1,1', 'base_dim=16']) == 0
        outputs.append(capsys.readouterr().out.splitlines()[-1])
    assert outputs[0] == outputs[1] and 'class_1' in outputs[0]

    backbone = HorNetBackbone(arch='tiny_gf', **SMALL, init_cfg=dict(type='Pretrained', checkpoint=src))
    backbone.init_weights()
    assert torch.equal(backbone.state_dict()['stages.2.0.gnconv.proj_in.weight'],
                       ckpt['model']['stages.2.0.gnconv.proj_in.weight'])
