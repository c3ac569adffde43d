"""models/mm_hornet.py: the OpenMMLab HorNet backbone and the layer-decay optimizer constructor."""
import functools
import json
import os
import shutil
import site
import subprocess
import sys

import mmdet.registry
import mmseg.registry
import pytest
import timm
import torch
import torch.nn as nn
from mmengine.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

import models
from helpers import ROOT, SMALL, run_python, subprocess_env
from models.mm_hornet import HorNetBackbone, HorNetLayerDecayOptimizerConstructor, load_hornet_backbone_checkpoint

GF_DET = ((14, 8), (7, 4))
GF_SEG = ((24, 13), (12, 7))


def _backbone(**kwargs) -> HorNetBackbone:
    cfg = dict(type='HorNet', arch='tiny_gf', **SMALL)
    cfg.update(kwargs)
    return MODELS.build(cfg)


@pytest.mark.slow
def test_models_package_stays_free_of_openmmlab():
    code = ('import sys, models; '
            'print(sorted(m for m in sys.modules if m.split(".")[0] in ("mmengine", "mmcv", "mmdet", "mmseg")))')
    out = run_python(['-c', code])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == '[]'


def test_registered_in_root_and_resolved_by_children():
    assert MODELS.get('HorNet') is HorNetBackbone
    assert mmdet.registry.MODELS.get('HorNet') is HorNetBackbone
    assert mmseg.registry.MODELS.get('HorNet') is HorNetBackbone
    assert OPTIM_WRAPPER_CONSTRUCTORS.get('HorNetLayerDecayOptimizerConstructor') \
        is HorNetLayerDecayOptimizerConstructor
    assert mmdet.registry.OPTIM_WRAPPER_CONSTRUCTORS.get('HorNetLayerDecayOptimizerConstructor') \
        is HorNetLayerDecayOptimizerConstructor
    b = mmdet.registry.MODELS.build(dict(type='HorNet', arch='tiny_7x7', **SMALL))
    assert isinstance(b, HorNetBackbone)


def test_outputs_norms_and_arch_by_data():
    b = _backbone(gf_sizes=(None, None) + GF_SEG)
    outs = b(torch.randn(2, 3, 96, 128))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 24, 32), (2, 32, 12, 16), (2, 64, 6, 8), (2, 128, 3, 4)]
    assert [type(getattr(b, f'norm{i}')).__name__ for i in range(4)] == ['LayerNorm2d'] * 4
    assert b.norm0.eps == 1e-6
    assert tuple(b.stages[2][0].gnconv.dwconv.complex_weight.shape) == (60, 24, 13, 2)
    assert tuple(b.stages[3][0].gnconv.dwconv.complex_weight.shape) == (124, 12, 7, 2)
    # channels-first LayerNorm: every output position has zero mean over channels at init
    assert outs[1].mean(1).abs().max().item() < 1e-5
    # arch alone gives the real variant; the trunk is models.HorNet's own modules
    full = MODELS.build(dict(type='HorNet', arch='tiny_gf'))
    assert sum(p.numel() for p in full.parameters()) == 22_991_848 - 513 * 1000 - 2 * 512 + 2 * (64 + 128 + 256 + 512)
    assert tuple(full.stages[2][0].gnconv.dwconv.complex_weight.shape[1:3]) == (14, 8)
    b = _backbone(out_indices=(1, 3))
    assert [o.shape[1] for o in b(torch.randn(1, 3, 64, 64))] == [32, 128]
    assert not hasattr(b, 'norm0') and hasattr(b, 'norm3')
    with pytest.raises(ValueError, match='tiny_gf'):
        MODELS.build(dict(type='HorNet', arch='tiny'))


def test_with_cp_same_outputs_and_grads():
    torch.manual_seed(0)
    b = _backbone(layer_scale_init_value=1.0)
    x = torch.randn(1, 3, 64, 64)
    ref = sum(o.square().sum() for o in b(x))
    ref.backward()
    g_ref = b.stages[1][0].pwconv1.weight.grad.clone()
    b.zero_grad()
    b.with_cp = True
    out = sum(o.square().sum() for o in b(x))
    out.backward()
    assert torch.allclose(out, ref)
    assert torch.allclose(b.stages[1][0].pwconv1.weight.grad, g_ref, atol=1e-6)


def test_frozen_stages():
    b = _backbone(frozen_stages=2, drop_path_rate=0.5)
    b.train()
    frozen = [n for n, p in b.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(('downsample_layers.0.', 'downsample_layers.1.', 'stages.0.', 'stages.1.'))
                          for n in frozen)
    assert len(frozen) == sum(1 for n, _ in b.named_parameters()
                              if n.split('.')[0] in ('downsample_layers', 'stages') and int(n.split('.')[1]) < 2)
    assert not b.stages[1].training and b.stages[2].training


def _classification_ckpt(tmp_path, gf=True):
    cls = timm.create_model('hornet_tiny_gf' if gf else 'hornet_tiny_7x7', num_classes=10, **SMALL)
    torch.manual_seed(1)
    for p in cls.parameters():
        nn.init.normal_(p)
    path = tmp_path / 'cls.pth'
    torch.save({'model': cls.state_dict(), 'epoch': 3}, path)
    return cls, path


def test_init_from_released_classification_checkpoint(tmp_path):
    cls, path = _classification_ckpt(tmp_path)
    b = _backbone(gf_sizes=(None, None) + GF_SEG, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    b.init_weights()
    trunk = {k: v for k, v in cls.state_dict().items() if not k.startswith(('head.', 'norm.'))}
    state = b.state_dict()
    loaded = [k for k in trunk if k in state and state[k].shape == trunk[k].shape and torch.equal(state[k], trunk[k])]
    assert len(trunk) == 108 and len(loaded) == 106  # all but the two resized GF filters
    w = state['stages.3.0.gnconv.dwconv.complex_weight']
    assert tuple(w.shape) == (124, 12, 7, 2)
    assert torch.allclose(w, models.resize_complex_weight(trunk['stages.3.0.gnconv.dwconv.complex_weight'], (12, 7)))
    assert torch.equal(state['norm2.weight'], torch.ones(64)) and torch.equal(state['norm2.bias'], torch.zeros(64))

    info = load_hornet_backbone_checkpoint(_backbone(gf_sizes=(None, None) + GF_SEG), torch.load(path))
    assert len(info['loaded']) == 108
    assert info['missing'] == [f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias')]
    assert info['resized'] == ['stages.2.0.gnconv.dwconv.complex_weight', 'stages.3.0.gnconv.dwconv.complex_weight']

    # `pretrained=` is the same thing; a checkpoint of another variant fails with the key list
    b = _backbone(arch='tiny_7x7', pretrained=str(path))
    with pytest.raises(models.CheckpointMismatchError, match='complex_weight'):
        b.init_weights()


def test_init_from_mmpretrain_classification_checkpoint():
    cls = timm.create_model('hornet_tiny_7x7', num_classes=10, **SMALL)
    sd = {}
    for k, v in cls.state_dict().items():
        if k.startswith('head.'):
            sd['head.fc.' + k[5:]] = v
        elif k.startswith('norm.'):
            sd['backbone.norm3.' + k[5:]] = v
        else:
            k = k.replace('.gnconv.pws.', '.gnconv.projs.').replace('.gamma1', '.gamma1.weight')
            sd['backbone.' + k.replace('.gamma2', '.gamma2.weight')] = v
    b = _backbone(arch='tiny_7x7')
    info = load_hornet_backbone_checkpoint(b, {'state_dict': sd, 'meta': {}})
    assert len(info['loaded']) == 100 and len(info['missing']) == 8  # 7x7: no GF filter/norm keys
    assert torch.equal(b.stages[3][0].gamma2, cls.stages[3][0].gamma2)
    assert torch.equal(b.stages[0][0].gnconv.pws[0].weight, cls.stages[0][0].gnconv.pws[0].weight)


def test_released_detection_backbone_keys_load_strictly():
    src = _backbone(gf_sizes=(None, None) + GF_DET)
    for p in src.parameters():
        nn.init.normal_(p)
    ckpt = {'meta': {}, 'state_dict': {
        **{f'backbone.{k}': v for k, v in src.state_dict().items()},
        'neck.lateral_convs.0.conv.weight': torch.zeros(256, 16, 1, 1),
        'rpn_head.rpn_conv.weight': torch.zeros(256, 256, 3, 3)}}
    keys = [k for k in ckpt['state_dict'] if k.startswith('backbone.')]
    assert len(keys) == 116 and {f'backbone.norm{i}.weight' for i in range(4)} <= set(keys)
    dst = _backbone(gf_sizes=(None, None) + GF_DET)
    info = load_hornet_backbone_checkpoint(dst, ckpt)
    assert len(info['loaded']) == 116 and info['resized'] == [] and info['missing'] == []
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    # plain strict load of the same keys into the module tree: names are exactly the released ones
    res = dst.load_state_dict({k[len('backbone.'):]: v for k, v in ckpt['state_dict'].items()
                               if k.startswith('backbone.')}, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    # a missing output norm is reported, not silently skipped
    bad = {k: v for k, v in ckpt['state_dict'].items() if not k.startswith('backbone.norm2.')}
    with pytest.raises(models.CheckpointMismatchError, match='norm2.weight'):
        load_hornet_backbone_checkpoint(_backbone(gf_sizes=(None, None) + GF_DET), {'state_dict': bad})


# Reference section 5 (the original constructor), copied: parameter -> per setting (id, exponent,
# scale rounded to 4 digits). Settings: layer_wise n=12 r=0.7 | layer_wise n=6 r=0.95 |
# stage_wise n=12 r=0.9 | stage_wise n=6 r=0.9.
SETTINGS = [('layer_wise', 12, 0.7), ('layer_wise', 6, 0.95), ('stage_wise', 12, 0.9), ('stage_wise', 6, 0.9)]
LR_SCALE_TABLE = {
    'backbone.downsample_layers.0.0.weight':
        [(0, 13, 0.0097), (0, 7, 0.6983), (0, 13, 0.2542), (0, 7, 0.4783)],
    'backbone.stages.0.1.gamma1':
        [(1, 12, 0.0138), (1, 6, 0.7351), (1, 12, 0.2824), (1, 6, 0.5314)],
    'backbone.downsample_layers.1.1.weight':
        [(2, 11, 0.0198), (2, 5, 0.7738), (0, 13, 0.2542), (0, 7, 0.4783)],
    'backbone.stages.1.2.pwconv1.weight':
        [(2, 11, 0.0198), (2, 5, 0.7738), (2, 11, 0.3138), (2, 5, 0.5905)],
    'backbone.downsample_layers.2.0.weight':
        [(3, 10, 0.0282), (3, 4, 0.8145), (0, 13, 0.2542), (0, 7, 0.4783)],
    'backbone.stages.2.0.norm1.weight':
        [(3, 10, 0.0282), (3, 4, 0.8145), (3, 10, 0.3487), (3, 4, 0.6561)],
    'backbone.stages.2.7.gnconv.dwconv.weight':
        [(6, 7, 0.0824), (6, 1, 0.9500), (3, 10, 0.3487), (3, 4, 0.6561)],
    'backbone.stages.2.8.pwconv2.weight':
        [(7, 6, 0.1176), (7, 0, 1.0000), (3, 10, 0.3487), (3, 4, 0.6561)],
    'backbone.stages.2.13.gamma2':
        [(9, 4, 0.2401), (9, -2, 1.1080), (3, 10, 0.3487), (3, 4, 0.6561)],
    'backbone.stages.2.17.gnconv.dwconv.complex_weight':
        [(11, 2, 0.4900), (11, -4, 1.2277), (3, 10, 0.3487), (3, 4, 0.6561)],
    'backbone.downsample_layers.3.1.weight':
        [(12, 1, 0.7000), (12, -5, 1.2924), (0, 13, 0.2542), (0, 7, 0.4783)],
    'backbone.stages.3.1.gnconv.pws.3.weight':
        [(12, 1, 0.7000), (12, -5, 1.2924), (4, 9, 0.3874), (4, 3, 0.7290)],
    'backbone.norm3.bias':
        [(13, 0, 1.0), (7, 0, 1.0), (13, 0, 1.0), (7, 0, 1.0)],
    'neck.lateral_convs.0.conv.weight':
        [(13, 0, 1.0), (7, 0, 1.0), (13, 0, 1.0), (7, 0, 1.0)],
    'decode_head.conv_seg.weight':
        [(13, 0, 1.0), (7, 0, 1.0), (13, 0, 1.0), (7, 0, 1.0)],
}


@functools.cache
def _dense_models():
    """A real Mask R-CNN (HorNet 7x7 trunk: stage 2 has ``gnconv.dwconv.weight``) and a real UperNet
    (HorNet GF trunk: ``complex_weight``), full depths [2, 3, 18, 2] at width 16, heads narrowed."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    det_cfg = Config.fromfile(os.path.join(ROOT, 'object_detection', 'configs',
                                           'mask_rcnn_hornet_small_7x7_fpn_1x_coco.py'))
    det_cfg.model.backbone.update(base_dim=16, init_cfg=None)
    det_cfg.model.neck.update(in_channels=[16, 32, 64, 128], out_channels=32)
    det_cfg.model.rpn_head.update(in_channels=32, feat_channels=32)
    det_cfg.model.roi_head.bbox_head.update(in_channels=32, fc_out_channels=64)
    det_cfg.model.roi_head.mask_head.update(in_channels=32, conv_out_channels=32)
    init_default_scope('mmdet')
    det = mmdet.registry.MODELS.build(det_cfg.model)
    seg_cfg = Config.fromfile(os.path.join(ROOT, 'semantic_segmentation', 'configs', 'hornet',
                                           'upernet_hornet_tiny_gf_512_160k_ade20k.py'))
    seg_cfg.model.backbone.update(base_dim=16, init_cfg=None)
    seg_cfg.model.decode_head.update(in_channels=[16, 32, 64, 128], channels=32)
    seg_cfg.model.auxiliary_head.update(in_channels=64, channels=16)
    init_default_scope('mmseg')
    seg = mmseg.registry.MODELS.build(seg_cfg.model)
    return det, seg


def _param_groups(model: nn.Module, decay_type: str, num_layers: int, decay_rate: float,
                  base_lr: float = 2e-4) -> dict:
    """name -> the optimizer group of that parameter, from the real constructor via the config path."""
    from mmengine.optim import build_optim_wrapper
    wrapper = build_optim_wrapper(model, dict(
        type='OptimWrapper', constructor='HorNetLayerDecayOptimizerConstructor',
        optimizer=dict(type='AdamW', lr=base_lr, betas=(0.9, 0.999), weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=decay_rate, decay_type=decay_type, num_layers=num_layers)))
    by_param = {id(p): g for g in wrapper.optimizer.param_groups for p in g['params']}
    return {n: by_param[id(p)] for n, p in model.named_parameters()}


@pytest.mark.parametrize('setting', range(4), ids=[f'{t}_n{n}_r{r}' for t, n, r in SETTINGS])
def test_layer_decay_scales_match_reference_table(setting):
    decay_type, n, r = SETTINGS[setting]
    found = set()
    for model in _dense_models():
        groups = _param_groups(model, decay_type, n, r)
        for name, rows in LR_SCALE_TABLE.items():
            if name not in groups:
                continue
            found.add(name)
            lid, exponent, table_scale = rows[setting]
            g = groups[name]
            assert g['layer_id'] == lid, name
            assert g['lr'] / 2e-4 == pytest.approx(r ** exponent, rel=1e-12), name
            assert g['lr'] / 2e-4 == pytest.approx(table_scale, abs=5e-5), name
            assert g['lr_scale'] == pytest.approx(table_scale, abs=5e-5)
            assert g['group_name'] == f'layer_{lid}_{"no_decay" if g["weight_decay"] == 0 else "decay"}'
        # weight decay 0 exactly for 1-D parameters and names ending in .bias
        for name, p in model.named_parameters():
            assert groups[name]['weight_decay'] == (0.0 if p.ndim == 1 or name.endswith('.bias') else 0.05), name
    assert found == set(LR_SCALE_TABLE)


def test_layer_wise_n6_scales_above_one_and_shared_top_group():
    """Mask R-CNN HorFPN setting: no clamp, ids 8..12 above the top id 7 (scales > 1), and the
    stage-2 blocks 8-9 share the lr group layer_7_* with the neck and heads."""
    det, _ = _dense_models()
    groups = _param_groups(det, 'layer_wise', 6, 0.95, base_lr=1e-4)
    assert groups['backbone.stages.3.0.pwconv1.weight']['lr'] == pytest.approx(1e-4 * 0.95 ** -5)
    assert groups['backbone.stages.2.10.pwconv1.weight']['lr'] == pytest.approx(1e-4 * 0.95 ** -1)
    assert groups['backbone.stages.2.8.pwconv1.weight'] is groups['neck.fpn_convs.0.conv.weight']
    assert groups['backbone.stages.2.9.norm2.weight'] is groups['roi_head.bbox_head.fc_cls.bias']
    assert max(g['lr'] for g in groups.values()) == pytest.approx(1e-4 * 0.95 ** -5)


def test_one_layer_id_rule_for_classifier_and_timm():
    """The classifier (no ``backbone.`` prefix, n = 12) uses the same rule: scale decay**(13 - id),
    head/norm at 13; timm's param_groups_layer_decay reaches it through HorNet.group_matcher."""
    import timm.optim

    from optim_factory import param_groups_layer_decay
    cls_ids = {k[len('backbone.'):]: rows[0][0] for k, rows in LR_SCALE_TABLE.items() if k.startswith('backbone.')}
    cls_ids.pop('norm3.bias')
    cls_ids.update({'head.weight': 13, 'head.bias': 13, 'norm.weight': 13})
    for arch in ('hornet_tiny_7x7', 'hornet_tiny_gf'):
        with torch.device('meta'):
            model = timm.create_model(arch)
        params = dict(model.named_parameters())
        groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.7)
        by_name = {n: g for g in groups for n in g['names']}
        assert sorted({g['layer_id'] for g in groups}) == list(range(14))
        for name, lid in cls_ids.items():
            if name not in params:
                continue
            assert by_name[name]['layer_id'] == lid == models.layer_id(name), name
            assert by_name[name]['lr_scale'] == pytest.approx(0.7 ** (13 - lid), rel=1e-12), name
        for name, p in params.items():
            g = by_name[name]
            assert g['lr_scale'] == pytest.approx(0.7 ** (13 - models.layer_id(name)))
            assert g['weight_decay'] == (0.0 if p.ndim <= 1 or name.endswith('.bias') else 0.05), name
        t_groups = timm.optim.param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.7)
        t_scale = {id(p): g['lr_scale'] for g in t_groups for p in g['params']}
        assert all(t_scale[id(p)] == pytest.approx(by_name[n]['lr_scale']) for n, p in params.items())
    # stage_wise through the same function (coarse group matcher)
    assert [models.layer_id(n, 12, 'stage_wise') for n in
            ('downsample_layers.3.1.weight', 'stages.2.5.gamma1', 'norm.weight')] == [0, 3, 13]
    with pytest.raises(ValueError, match='stage_wise'):
        models.layer_id('stages.0.0.gamma1', 12, 'blockwise')


@pytest.mark.slow  # creates a virtual environment and builds the package (~1 minute)
def test_installed_package_backbone_loads_a_local_checkpoint(tmp_path):
    """`pip install .` into a fresh environment, then, from a folder outside the repository: the
    OpenMMLab backbone of the installed package (`hornet.mm_hornet`, type='HorNet') with a local
    checkpoint in its init_cfg loads it in init_weights, importing nothing of the repository."""
    cls = timm.create_model('hornet_tiny_gf', num_classes=10, **SMALL)
    torch.manual_seed(3)
    for p in cls.parameters():
        nn.init.normal_(p)
    ckpt = tmp_path / 'hornet_small.pth'
    torch.save({'model': cls.state_dict(), 'epoch': 3}, ckpt)

    venv = tmp_path / 'venv'
    made = subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', '--without-pip', str(venv)],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    python = str(venv / 'bin' / 'python')
    # torch, timm, mmengine, mmcv and pip come from this interpreter's environment. When that is itself a
    # virtual environment --system-site-packages reaches only the base Python, so its site-packages go on
    # the new one's path too (a plain path entry: the editable `hornet` of this environment stays out)
    site_dir = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                              capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site_dir, 'dev-environment.pth'), 'w') as f:
        f.write('\n'.join(p for p in site.getsitepackages() if os.path.isdir(p)) + '\n')
    # a copy of the checkout, so that the build's build/ and egg-info stay out of it; --ignore-installed:
    # pip never touches the hornet installed in this interpreter's environment
    src = tmp_path / 'src'
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        '.git', 'output', 'logs', '__pycache__', '*.egg-info', 'build', '.pytest_cache', '.hypothesis'))
    env = subprocess_env(pythonpath=None)
    r = subprocess.run([python, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation', '--ignore-installed',
                        '--no-index', str(src)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    code = f"""
import json, sys, torch
from mmengine.registry import MODELS
import hornet, hornet.mm_hornet
backbone = MODELS.build(dict(type='HorNet', arch='tiny_gf', depths=(1, 1, 1, 1), base_dim=16,
                             init_cfg=dict(type='Pretrained', checkpoint={str(ckpt)!r})))
backbone.init_weights()
saved = torch.load({str(ckpt)!r}, weights_only=True)['model']
state = backbone.state_dict()
trunk = [k for k in saved if not k.startswith(('head.', 'norm.'))]
print(json.dumps(dict(
    file=hornet.mm_hornet.__file__, loaded=sum(torch.equal(state[k], saved[k]) for k in trunk), trunk=len(trunk),
    repository=sorted(m for m in sys.modules if m.split('.')[0] in ('models', 'tools', 'run_dir', 'utils')))))
"""
    r = subprocess.run([python, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out['file'] == os.path.join(site_dir, 'hornet', 'mm_hornet.py')
    assert out['trunk'] == 108 and out['loaded'] == 108
    assert out['repository'] == []
