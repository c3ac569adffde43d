"""The default augmentation (timm RandAugment ``inc1`` policies) must not crash on
Pillow 13, whose ``ImageOps.posterize`` rejects the 0 bits those policies ask for."""
import math
import os
import random
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from timm.data import auto_augment

import augment
import datasets
import main as train_main
from helpers import ROOT, make_image_folder, read_log

# the per-model --aa column of TRAINING.md (and the original recipes)
DOCUMENTED = {'rand-m9-mstd0.5-inc1', 'rand-m12-mstd0.5-inc1', 'rand-m15-mstd0.5-inc1'}


def documented_policies():
    """main.py's default --aa plus every RandAugment/AutoAugment policy named in TRAINING.md/README.md."""
    found = {train_main.parse_args([]).aa}
    for doc in ('TRAINING.md', 'README.md'):
        with open(os.path.join(ROOT, doc), encoding='utf-8') as f:
            found |= set(re.findall(r'\b(?:rand|augmix|v0r?|original)-m\d+[\w.-]*', f.read()))
    return sorted(found)


def test_documented_policies_found():
    assert train_main.parse_args([]).aa == 'rand-m9-mstd0.5-inc1'
    assert DOCUMENTED <= set(documented_policies())


def _rgb(seed, size=(24, 20)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


def test_posterize_bits():
    img = _rgb(0)
    arr = np.asarray(img)
    assert np.asarray(augment.posterize(img, 0)).max() == 0          # keep no bit: black (Pillow <= 12)
    assert np.asarray(augment.posterize(img, -3)).max() == 0         # clamped to 0
    gray = img.convert('L')
    assert np.asarray(augment.posterize(gray, 0)).max() == 0
    assert augment.posterize(gray, 0).mode == 'L'
    for bits in (1, 3, 4, 7):
        mask = (0xFF << (8 - bits)) & 0xFF
        np.testing.assert_array_equal(np.asarray(augment.posterize(img, bits)), arr & mask)
        np.testing.assert_array_equal(np.asarray(augment.posterize(img, bits)),
                                      np.asarray(ImageOps.posterize(img, bits)))
    assert augment.posterize(img, 8) is img and augment.posterize(img, 11) is img


def test_patch_only_when_needed(monkeypatch):
    table = dict(auto_augment.NAME_TO_OP)
    monkeypatch.setattr(auto_augment, 'NAME_TO_OP', table)
    for name in augment._POSTERIZE_OPS:
        table[name] = auto_augment.posterize
    try:
        auto_augment.posterize(_rgb(1), 0)
        timm_ok = True
    except ValueError as e:
        assert 'bits' in str(e)
        timm_ok = False
    assert augment.patch_timm_posterize() is (not timm_ok)
    expected = auto_augment.posterize if timm_ok else augment.posterize
    assert all(table[name] is expected for name in augment._POSTERIZE_OPS)
    assert augment.patch_timm_posterize() is (not timm_ok)  # idempotent
    # a timm whose op already handles 0 bits is left alone
    table['PosterizeIncreasing'] = fixed = (lambda img, bits, **_: augment.posterize(img, bits))
    monkeypatch.setattr(auto_augment, 'posterize', fixed)
    assert augment.patch_timm_posterize() is False and table['PosterizeIncreasing'] is fixed


def _train_args(aa):
    args = train_main.parse_args(['--input_size', '32', '--aa', aa])
    assert (args.reprob, args.color_jitter, args.train_interpolation) == (0.25, 0.4, 'bicubic')
    return args


@pytest.mark.parametrize('aa', sorted(DOCUMENTED | set(documented_policies())))
def test_policy_many_calls(aa):
    """3000 train-transform calls per documented policy; the 0-bit posterize must occur (in the
    three recipe policies) and give black."""
    transform = datasets.build_transform(True, _train_args(aa))
    ra = [t for t in transform.transforms if isinstance(t, auto_augment.RandAugment)]
    assert len(ra) == 1
    calls = []

    def spy(fn):
        def wrapped(img, bits, **kw):
            out = fn(img, bits, **kw)
            calls.append((bits, np.asarray(out).max()))
            return out
        return wrapped

    ops = [op for op in ra[0].ops if op.name.startswith('Posterize')]
    assert len(ops) == 1 and (aa not in DOCUMENTED or ops[0].name == 'PosterizeIncreasing')
    for op in ops:
        op.aug_fn = spy(op.aug_fn)
    random.seed(0)
    torch.manual_seed(0)
    images = [_rgb(i, (32, 32)) for i in range(50)]
    for i in range(3000):
        x = transform(images[i % 50])
        assert x.shape == (3, 32, 32) and torch.isfinite(x).all()
    zero = [peak for bits, peak in calls if bits == 0]
    if aa in DOCUMENTED:
        assert len(zero) > 0, calls    # the case Pillow 13 rejects did occur ...
    assert max(zero, default=0) == 0   # ... and gave black images
    assert {bits for bits, _ in calls} <= {0, 1, 2, 3, 4}


@pytest.mark.parametrize('aa', [None, 'rand-m15-mstd0.5-inc1'])
def test_default_augmentation_trains(tmp_path, aa):
    """main.py with every augmentation flag at its default (RandAugment m9 inc1, random erasing 0.25,
    mixup 0.8 / cutmix 1.0, color jitter 0.4, label smoothing 0.1), and with TRAINING.md's strongest
    policy (m15: the 0-bit posterize hits several of these 96 images): finite losses in log.txt."""
    data = make_image_folder(str(tmp_path / 'data'), train_per_class=16, size=32)
    out = str(tmp_path / 'out')
    argv = ['--model', 'hornet_tiny_gf', '--depths', '1', '1', '1', '1', '--base_dim', '16',
            '--input_size', '32', '--nb_classes', '3', '--data_path', data, '--output_dir', out,
            '--device', 'cpu', '--batch_size', '8', '--epochs', '2', '--warmup_epochs', '0',
            '--num_workers', '0', '--print_freq', '100']
    args = train_main.parse_args(argv)
    assert (args.aa, args.reprob, args.mixup, args.cutmix, args.color_jitter, args.smoothing) == \
        ('rand-m9-mstd0.5-inc1', 0.25, 0.8, 1.0, 0.4, 0.1)
    argv += ['--aa', aa] if aa else []
    assert train_main.run(argv) == 0
    log = read_log(out)
    assert [r['epoch'] for r in log] == [0, 1]
    for r in log:
        assert math.isfinite(r['train_loss']) and 0 < r['train_loss'] < 10
        assert math.isfinite(r['test_loss'])
