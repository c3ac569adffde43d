"""validate.py: the fake layouts of ImageNet val/ReaL/V2/A/R/Sketch, subset mapping and the results CSV.

The probe model reads the class it predicts off the image colour (solid images: red + 256 * green =
p) and scores class c with -(c - p - 0.1)^2, so its top-5 is p, p+1, p-1, p+2, p-2, and on a subset
the nearest subset classes: every expected number below is counted by hand from that rule.
"""
import csv
import json

import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

import export
import validate
from helpers import SMALL, SMALL_ARGS, documented_commands

MEAN, STD = timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD


class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(20000))  # 0.02 M parameters
        self.pretrained_cfg = dict(input_size=(3, 64, 64))

    def forward(self, x):
        rgb = x.mean((2, 3)) * torch.tensor(STD) + torch.tensor(MEAN)
        level = (rgb * 255).round()
        p = level[:, 0] + 256 * level[:, 1]
        c = torch.arange(1000, dtype=torch.float64)
        return -(c[None] - p.double()[:, None] - 0.1) ** 2


def _image(path, p):
    path.parent.mkdir(parents=True, exist_ok=True)
    # PNG content under any name (lossless: the colour survives), as ImageFolder sniffs no format
    Image.new('RGB', (40, 48), (p % 256, p // 256, 0)).save(path, format='PNG')


def _layout(root, images):
    """images: (class folder, file name, encoded prediction p)."""
    for folder, name, p in images:
        _image(root / folder / name, p)
    return root


@pytest.fixture
def probe(monkeypatch):
    calls = []

    def load_model(source, name, pretrained=False, checkpoint_key='auto', model_kwargs=None):
        calls.append(source)
        return Probe(), 'probe'
    monkeypatch.setattr(validate, 'load_model', load_model)
    return calls


def _read_csv(path):
    with open(path, newline='') as f:
        return {r['dataset']: r for r in csv.DictReader(f)}


def test_subset_lists_come_from_timm_and_match_imagenet_order():
    synsets = validate.imagenet_synsets()
    assert len(synsets) == 1000 and synsets[0] == 'n01440764' and synsets[999] == 'n15075141'
    for key in ('a', 'r'):
        wnids, indices = validate.subset_classes(key)
        assert len(wnids) == len(indices) == 200 and indices == sorted(indices)
        assert [synsets[i] for i in indices] == wnids
    assert validate.subset_classes('a')[1][:4] == [6, 11, 13, 15]
    assert validate.subset_classes('r')[1][:4] == [1, 2, 4, 6]


def test_all_layouts_give_hand_computed_csv(tmp_path, probe, capsys):
    val = _layout(tmp_path / 'val', [
        ('n01440764', 'ILSVRC2012_val_00000003.JPEG', 0),    # class 0: top-1 right
        ('n01443537', 'ILSVRC2012_val_00000001.JPEG', 2),    # class 1: top-5 (2, 3, 1, ...) only
        ('n01496331', 'ILSVRC2012_val_00000004.JPEG', 9),    # class 5: wrong
        ('n15075141', 'ILSVRC2012_val_00000002.JPEG', 999),  # class 999: right
    ])
    # ReaL, in sorted file order 01..04; 02 has no valid label and is not counted
    real = tmp_path / 'real.json'
    real.write_text(json.dumps([[2, 7], [], [5], [11, 12]]))
    v2 = _layout(tmp_path / 'v2', [('2', 'a.jpeg', 2), ('10', 'b.jpeg', 10), ('2', 'c.jpeg', 4)])
    # A: indices 6, 11, 13, 15, 17, 22, 23, 27, ...; unrestricted, p=12 would be class 12
    a = _layout(tmp_path / 'a', [
        ('n01531178', 'x.jpg', 11),  # 11: right
        ('n01534433', 'x.jpg', 12),  # 13: nearest subset class of 12.1 is 13: right
        ('n01498041', 'x.jpg', 14),  # 6: top-5 15, 13, 17, 11, 22: wrong
        ('n01558993', 'x.jpg', 20),  # 15: top-5 22, 23, 17, 15, 27: top-5 only
    ])
    # R: indices 1, 2, 4, 6, 8, 9, 11, 13, ...
    r = _layout(tmp_path / 'r', [
        ('n01494475', 'x.jpg', 3),   # 4: right (4 beats 2)
        ('n01443537', 'x.jpg', 0),   # 1: right (0 is not in R)
        ('n01484850', 'x.jpg', 7),   # 2: top-5 8, 6, 9, 4, 11: wrong
    ])
    sketch = _layout(tmp_path / 'sketch', [('n01440764', 'x.png', 1), ('n15075141', 'y.png', 999)])
    out = tmp_path / 'results.csv'
    rc = validate.main(['--imagenet_val', str(val), '--imagenet_real', str(real), '--imagenet_v2', str(v2),
                        '--imagenet_a', str(a), '--imagenet_r', str(r), '--imagenet_sketch', str(sketch),
                        '--results_file', str(out), '--num_workers', '0', '--batch_size', '3', '--device', 'cpu'])
    assert rc == 0
    with open(out) as f:
        assert f.readline().strip() == ('model,top1,top1_err,top5,top5_err,param_count,img_size,crop_pct,'
                                        'interpolation,dataset')
    rows = _read_csv(out)
    expected = {'imagenet': (50.0, 75.0), 'imagenet-real': (33.3333, 66.6667), 'imagenetv2': (66.6667, 100.0),
                'imagenet-a': (50.0, 75.0), 'imagenet-r': (66.6667, 66.6667), 'imagenet-sketch': (50.0, 100.0)}
    assert list(rows) == list(expected)
    for name, (top1, top5) in expected.items():
        row = rows[name]
        assert (float(row['top1']), float(row['top5'])) == (top1, top5), name
        assert float(row['top1_err']) == round(100 - top1, 4) and float(row['top5_err']) == round(100 - top5, 4)
        # 64 px: resize the short side to int(64 / 0.875) = 73, centre crop 64 (datasets.build_transform)
        assert (row['model'], row['param_count'], row['img_size'], row['crop_pct'], row['interpolation']) == \
            ('probe', '0.02', '64', str(round(64 / 73, 4)), 'bicubic')
    printed = capsys.readouterr().out
    assert 'imagenet-real: 3 images, top-1 33.333, top-5 66.667' in printed
    assert printed.endswith(out.read_text())


def test_imagenet_real_defaults_to_timm_copy_and_needs_the_whole_val_set(tmp_path, probe, capsys):
    val = _layout(tmp_path / 'val', [('n01440764', 'ILSVRC2012_val_00000001.JPEG', 0)])
    assert validate.main(['--imagenet_val', str(val), '--imagenet_real', '--num_workers', '0']) == 2
    err = capsys.readouterr().err
    assert err == (f'error: --imagenet_real has 50000 label lists but --imagenet_val {val} holds 1 images; '
                   'ReaL needs the whole val set\n')


@pytest.mark.parametrize('flag, folder, text', [
    ('--imagenet_a', 'n01440764', 'class folders that are not among the 200 ImageNet-A classes: n01440764'),
    ('--imagenet_r', 'n01498041x', 'not among the 200 ImageNet-R classes: n01498041x'),
    ('--imagenet_v2', '1000', 'class folders that are not class indices 0..999: 1000'),
    ('--imagenet_val', 'cats', 'not ImageNet-1K WordNet ids: cats'),
])
def test_wrong_layout_is_one_line_exit_2(tmp_path, probe, capsys, flag, folder, text):
    root = _layout(tmp_path / 'd', [(folder, 'x.png', 0)])
    assert validate.main([flag, str(root), '--num_workers', '0']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and text in err, err


def test_usage_errors_one_line_exit_2(tmp_path, probe, capsys):
    assert validate.main(['--num_workers', '0']) == 2
    assert 'no data set given' in capsys.readouterr().err
    assert validate.main(['--imagenet_real', '--num_workers', '0']) == 2
    assert 'pass --imagenet_val DIR too' in capsys.readouterr().err
    assert validate.main(['--imagenet_a', str(tmp_path / 'none')]) == 2
    assert f'--imagenet_a: {tmp_path / "none"} is not a folder' in capsys.readouterr().err
    (tmp_path / 'r.csv').write_text('keep')
    val = _layout(tmp_path / 'val', [('n01440764', 'x.png', 0)])
    assert validate.main(['--imagenet_val', str(val), '--results_file', str(tmp_path / 'r.csv')]) == 2
    assert 'exists; pass --overwrite' in capsys.readouterr().err
    assert (tmp_path / 'r.csv').read_text() == 'keep'
    with pytest.raises(SystemExit) as e:
        validate.main(['--batch_size', '0'])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('validate.py: error: argument --batch_size')


def test_checkpoint_file_and_hub_folder_evaluate_alike(tmp_path, capsys):
    """A real small HorNet: its checkpoint file and its export.py hub folder (local-dir:) give the
    same row, and the row's accuracy is the model's own top-1/top-5 on the transformed images."""
    model = timm.create_model('hornet_tiny_gf', **SMALL, num_classes=1000).eval()
    ckpt = tmp_path / 'ckpt.pth'
    torch.save({'model': model.state_dict()}, ckpt)
    hub = tmp_path / 'hub'
    assert export.main(['--model', 'hornet_tiny_gf', '--checkpoint', str(ckpt), '--format', 'hub',
                        '--output', str(hub), '--input_size', '32', *SMALL_ARGS]) == 0
    val = _layout(tmp_path / 'val', [('n01440764', 'a.png', 0), ('n01443537', 'b.png', 300),
                                     ('n15075141', 'c.png', 999)])
    rows = []
    for i, source in enumerate([['--model', 'hornet_tiny_gf', '--checkpoint', str(ckpt), '--input_size', '32',
                                 *SMALL_ARGS], ['--checkpoint', f'local-dir:{hub}']]):
        out = tmp_path / f'r{i}.csv'
        assert validate.main([*source, '--imagenet_val', str(val), '--num_workers', '0', '--device', 'cpu',
                              '--results_file', str(out)]) == 0
        rows.append(_read_csv(out)['imagenet'])
    assert rows[0] == rows[1]
    import argparse

    import datasets
    t = datasets.build_transform(False, argparse.Namespace(input_size=32, crop_pct=None,
                                                           imagenet_default_mean_and_std=True))
    x = torch.stack([t(Image.open(val / d / n).convert('RGB')) for d, n in
                     [('n01440764', 'a.png'), ('n01443537', 'b.png'), ('n15075141', 'c.png')]])
    with torch.no_grad():
        top5 = model(x).topk(5).indices
    target = torch.tensor([0, 1, 999])
    top1 = round(100 * (top5[:, 0] == target).sum().item() / 3, 4)
    top5_acc = round(100 * (top5 == target[:, None]).any(1).sum().item() / 3, 4)
    params = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    assert rows[0] == dict(model='hornet_tiny_gf', top1=str(top1), top1_err=str(round(100 - top1, 4)),
                           top5=str(top5_acc), top5_err=str(round(100 - top5_acc, 4)), param_count=str(params),
                           img_size='32', crop_pct='1.0', interpolation='bicubic', dataset='imagenet')


def test_model_source_errors_one_line(tmp_path, capsys):
    val = _layout(tmp_path / 'val', [('n01440764', 'x.png', 0)])
    for argv, text in [
        (['--model', 'hornet_base_gf_img384', '--pretrained'], 'no mirrored weights to download'),
        (['--model', 'hornet_tiny', '--pretrained'], 'unknown model'),
        (['--checkpoint', str(tmp_path / 'x.pth')], '--model is required'),
        (['--checkpoint', f'local-dir:{tmp_path}'], 'has no config.json; write it with export.py --format hub'),
        (['--model', 'hornet_tiny_gf', '--checkpoint', str(tmp_path / 'x.pth')], 'no such file'),
    ]:
        assert validate.main([*argv, '--imagenet_val', str(val), '--num_workers', '0']) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and text in err, (argv, err)


def test_documented_commands_parse():
    cmds = documented_commands('validate.py')
    assert len(cmds) == 1
    args = validate.get_args_parser().parse_args(cmds[0])
    assert args.imagenet_real == '' and args.imagenet_a and args.imagenet_r and args.imagenet_sketch
