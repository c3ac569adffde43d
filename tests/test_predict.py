"""predict.py: top-5 ImageNet classes of a generated image with a small checkpoint."""
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import predict

SMALL_ARGS = ['--model_kwargs', 'depths=1,1,1,1', 'base_dim=16']


@pytest.fixture
def setup(tmp_path):
    model = timm.create_model('hornet_tiny_gf', depths=(1, 1, 1, 1), base_dim=16).eval()
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
