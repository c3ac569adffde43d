"""models/mm_hornet.py: the OpenMMLab HorNet backbone and the layer-decay optimizer constructor."""
import pytest
import timm
import torch
import torch.nn as nn

import mmdet.registry
import mmseg.registry
from mmengine.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

import models
from models.mm_hornet import HorNetBackbone, HorNetLayerDecayOptimizerConstructor, load_hornet_backbone_checkpoint

SMALL = dict(depths=(1, 1, 1, 1), base_dim=16)
GF_DET = ((14, 8), (7, 4))
GF_SEG = ((24, 13), (12, 7))


def _backbone(**kwargs) -> HorNetBackbone:
    cfg = dict(type='HorNet', arch='tiny_gf', **SMALL)
    cfg.update(kwargs)
    return MODELS.build(cfg)


def test_models_package_stays_free_of_openmmlab():
    import subprocess
    import sys
    code = 'import sys, models; print(sorted(m for m in sys.modules if m.split(".")[0] in ("mmengine", "mmcv", "mmdet", "mmseg")))'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                         cwd=models.__path__[0] + '/..')
    assert out.stdout.strip() == '[]'


def test_registered_in_root_and_resolved_by_children():
    assert MODELS.get('HorNet') is HorNetBackbone
    assert mmdet.registry.MODELS.get('HorNet') is HorNetBackbone
    assert mmseg.registry.MODELS.get('HorNet') is HorNetBackbone
    assert OPTIM_WRAPPER_CONSTRUCTORS.get('HorNetLayerDecayOptimizerConstructor') is HorNetLayerDecayOptimizerConstructor
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


class _Detector(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Conv2d(4, 4, 1)


def _groups(decay_type, num_layers, decay_rate, backbone):
    model = _Detector(backbone)
    ctor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='HorNetLayerDecayOptimizerConstructor',
        optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=2e-4, weight_decay=0.05)),
        paramwise_cfg=dict(decay_rate=decay_rate, decay_type=decay_type, num_layers=num_layers)))
    optim = ctor(model).optimizer
    by_param = {id(p): g for g in optim.param_groups for p in g['params']}
    named = dict(model.named_parameters())
    return {n: (by_param[id(p)]['lr'], by_param[id(p)]['weight_decay']) for n, p in named.items()}


def test_layer_wise_decay_scales():
    backbone = MODELS.build(dict(type='HorNet', arch='tiny_7x7', depths=(1, 1, 18, 1), base_dim=8))
    lr = _groups('layer_wise', 12, 0.7, backbone)
    # 14 groups: lr = 2e-4 * 0.7 ** (13 - group)
    assert lr['backbone.downsample_layers.0.0.weight'] == (pytest.approx(2e-4 * 0.7 ** 13), 0.05)  # stem
    assert lr['backbone.downsample_layers.0.0.bias'] == (pytest.approx(2e-4 * 0.7 ** 13), 0.0)
    # stage 2 block 9 -> group 3 + 9 // 2 = 7
    assert lr['backbone.stages.2.9.pwconv1.weight'] == (pytest.approx(2e-4 * 0.7 ** 6), 0.05)
    assert lr['backbone.stages.2.17.gamma1'] == (pytest.approx(2e-4 * 0.7 ** 2), 0.0)  # group 11
    assert lr['backbone.stages.3.0.pwconv2.weight'][0] == pytest.approx(2e-4 * 0.7)  # group 12
    assert lr['backbone.norm3.weight'] == (pytest.approx(2e-4), 0.0)
    assert lr['neck.weight'] == (pytest.approx(2e-4), 0.05)  # head: top group, scale 1
    assert len({v[0] for v in lr.values()}) == 14


def test_stage_wise_decay_scales():
    lr = _groups('stage_wise', 6, 0.9, _backbone(arch='tiny_7x7'))
    # 8 groups: downsample layers 0, stages.i -> i + 1, others 7
    assert lr['backbone.downsample_layers.0.0.weight'][0] == pytest.approx(2e-4 * 0.9 ** 7)
    assert lr['backbone.downsample_layers.2.1.weight'][0] == pytest.approx(2e-4 * 0.9 ** 7)
    assert lr['backbone.stages.1.0.gnconv.proj_in.weight'][0] == pytest.approx(2e-4 * 0.9 ** 5)
    assert lr['backbone.stages.3.0.gnconv.proj_in.weight'][0] == pytest.approx(2e-4 * 0.9 ** 3)
    assert lr['neck.weight'] == (pytest.approx(2e-4), 0.05)
    named = dict(_Detector(_backbone(arch='tiny_7x7')).named_parameters())
    assert {n for n, v in lr.items() if v[1] == 0.0} == {n for n, p in named.items() if p.ndim == 1}
