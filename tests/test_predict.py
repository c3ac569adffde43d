"""predict.py: top-5 ImageNet classes of a generated image with a small checkpoint."""
import re
import sys
import weakref

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import predict
from helpers import SMALL, SMALL_ARGS


@pytest.fixture
def setup(tmp_path):
    model = timm.create_model('hornet_tiny_gf', **SMALL).eval()
    # a larger head init so the top-5 probabilities are clearly apart
    with torch.no_grad():
        model.head.weight.mul_(50)
    ckpt = tmp_path / 'small.pth'
    torch.save({'model': model.state_dict()}, ckpt)
    rng = np.random.RandomState(0)
    img = tmp_path / 'img.png'
    Image.fromarray((rng.rand(180, 240, 3) * 255).astype(np.uint8)).save(img)
    return model, str(ckpt), str(img)


def _parse(out):
    return [(float(p), name) for p, name in re.findall(r'^\s+\d\. (\d\.\d{4})  (.+)$', out, re.M)]


def test_class_names_file():
    names = predict.load_class_names()
    assert len(names) == 1000
    assert names[0] == 'tench, Tinca tinca' and names[999].startswith('toilet tissue')


def test_predict_top5(setup, capsys):
    model, ckpt, img = setup
    rc = predict.main(['--model', 'hornet_tiny_gf', '--checkpoint', ckpt] + SMALL_ARGS + [img])
    out = capsys.readouterr().out
    assert rc == 0
    top = _parse(out)
    assert out.startswith(f'{img}:') and len(top) == 5
    probs = [p for p, _ in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1

    # same numbers as the variant's eval preprocessing (resize 224/0.875, center crop 224) + eager model
    cfg = resolve_data_config({}, model=model)
    assert cfg['input_size'] == (3, 224, 224) and cfg['crop_pct'] == 0.875
    x = create_transform(**cfg)(Image.open(img).convert('RGB'))
    with torch.no_grad():
        ref = model(x[None]).softmax(-1)[0].topk(5)
    names = predict.load_class_names()
    assert [n for _, n in top] == [names[i] for i in ref.indices.tolist()]
    assert probs == pytest.approx(ref.values.tolist(), abs=1e-4)


def test_unreadable_images(setup, tmp_path, capsys):
    _, ckpt, img = setup
    bad = tmp_path / 'bad.jpg'
    bad.write_text('not an image')
    missing = str(tmp_path / 'missing.png')
    rc = predict.main(['--model', 'hornet_tiny_gf', '--checkpoint', ckpt, str(bad), img, missing] + SMALL_ARGS)
    captured = capsys.readouterr()
    assert rc == 1
    assert f'{bad}: not a readable image' in captured.err and f'{missing}: no such file' in captured.err
    assert len(_parse(captured.out)) == 5  # the readable image is still classified
    assert predict.main(['--model', 'hornet_tiny_gf', '--checkpoint', ckpt, str(bad)] + SMALL_ARGS) == 1
    assert 'none of the given images' in capsys.readouterr().err


class _Recorder:
    """A stdout that logs what is printed into a shared event list."""

    def __init__(self, events):
        self.events = events

    def write(self, text):
        if text.endswith(':') or text.endswith(':\n'):
            self.events.append(('printed', text.rstrip('\n')[:-1]))
        return len(text)

    def flush(self):
        pass


def test_predict_streams_images(setup, tmp_path, monkeypatch):
    """7 images, --batch_size 3: each batch is decoded only after the previous one is printed, and at
    most one decoded image is alive at a time; predictions equal those of a one-image run."""
    model, ckpt, _ = setup
    rng = np.random.RandomState(1)
    paths = []
    for i in range(7):
        p = tmp_path / f'im{i}.png'
        Image.fromarray((rng.rand(60 + 10 * i, 90, 3) * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    events, alive, peak = [], [0], [0]
    real_read = predict.read_image

    def read(path):
        img = real_read(path)
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(img, lambda: alive.__setitem__(0, alive[0] - 1))
        events.append(('read', path))
        return img

    monkeypatch.setattr(predict, 'read_image', read)
    monkeypatch.setattr(sys, 'stdout', _Recorder(events))
    assert predict.main(['--model', 'hornet_tiny_gf', '--checkpoint', ckpt, '--batch_size', '3'] + SMALL_ARGS
                        + paths) == 0
    monkeypatch.undo()
    order = [kind[0] + str(paths.index(p)) for kind, p in events]
    assert order == ['r0', 'r1', 'r2', 'p0', 'p1', 'p2', 'r3', 'r4', 'r5', 'p3', 'p4', 'p5', 'r6', 'p6']
    assert peak[0] == 1 and alive[0] == 0

    # the batched, streamed numbers are those of each image on its own
    cfg = resolve_data_config({}, model=model)
    tf = create_transform(**cfg)
    streamed = list(predict.predict(model, ((p, Image.open(p).convert('RGB')) for p in paths), cfg, 5, 3))
    assert [k for k, _ in streamed] == paths
    for p, top in streamed:
        with torch.no_grad():
            ref = model(tf(Image.open(p).convert('RGB'))[None]).softmax(-1)[0].topk(5)
        assert [i for i, _ in top] == ref.indices.tolist()
        assert [v for _, v in top] == pytest.approx(ref.values.tolist(), abs=1e-5)


@pytest.mark.parametrize('saved', ['dict', 'namespace', 'safetensors'])
def test_predict_normalises_as_the_checkpoint_was_trained(setup, tmp_path, capsys, saved):
    """A checkpoint trained with ``--imagenet_default_mean_and_std false`` (main.py's ``args`` dict,
    an older checkpoint's namespace, or main.py's safetensors metadata) is preprocessed with
    Inception's mean/std, exactly ``datasets.eval_transform(size, None, False)``, and its top-5 are
    those of the model on that tensor (ImageNet's mean/std would give others)."""
    import argparse

    import datasets
    import main as train_main
    import run_dir
    model, _, img = setup
    path = str(tmp_path / 'ckpt.pth')
    flags = {'imagenet_default_mean_and_std': False}
    if saved == 'safetensors':  # what main.py --save_safetensors true writes at the end of training
        path = train_main.save_final_weights(str(tmp_path), model, None, {}, None, False, False)
        assert path.endswith('model.safetensors')
        assert not run_dir.imagenet_mean_and_std(run_dir.saved_args(run_dir.load_file(path)))
    else:
        torch.save({'model': model.state_dict(),
                    'args': argparse.Namespace(**flags) if saved == 'namespace' else flags}, path)
    _, train_args = predict.checkpoint_meta(path)
    image = Image.open(img).convert('RGB')
    x = predict.eval_transform(model, train_args)(image)
    assert torch.equal(x, datasets.eval_transform(224, None, False)(image))
    assert not torch.equal(x, datasets.eval_transform(224)(image))

    assert predict.main(['--model', 'hornet_tiny_gf', '--checkpoint', path] + SMALL_ARGS + [img]) == 0
    top = _parse(capsys.readouterr().out)
    with torch.no_grad():
        ref = model(x[None]).softmax(-1)[0].topk(5)
    names = predict.load_class_names()
    assert [n for _, n in top] == [names[i] for i in ref.indices.tolist()]
    assert [p for p, _ in top] == pytest.approx(ref.values.tolist(), abs=1e-4)
