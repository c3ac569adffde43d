"""object_detection/: every config parses and builds; HorFPN structure and forward."""
import glob
import os
import os.path as osp

import pytest
import torch

import mmcv.ops  # noqa: F401  (compiled ops must be present)
import mmdet
from mmengine.config import Config
from mmengine.registry import init_default_scope

import models
from models.mm_hornet import HorNetBackbone

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'object_detection', 'configs')
CONFIGS = sorted(osp.basename(p) for p in glob.glob(osp.join(CONFIG_DIR, '*.py')))

# (arch, gf filter sizes of stages 2/3, drop path, lr, layer decay) per released config
CASCADE = {
    'cascade_mask_rcnn_hornet_tiny_7x7_3x_coco.py': ('tiny_7x7', None, 0.4, 2e-4, 0.7),
    'cascade_mask_rcnn_hornet_tiny_gf_3x_coco.py': ('tiny_gf', ((14, 8), (7, 4)), 0.4, 2e-4, 0.7),
    'cascade_mask_rcnn_hornet_small_7x7_3x_coco.py': ('small_7x7', None, 0.6, 2e-4, 0.7),
    'cascade_mask_rcnn_hornet_small_gf_3x_coco.py': ('small_gf', ((14, 8), (7, 4)), 0.6, 2e-4, 0.7),
    'cascade_mask_rcnn_hornet_base_7x7_3x_coco.py': ('base_7x7', None, 0.7, 2e-4, 0.8),
    'cascade_mask_rcnn_hornet_base_gf_3x_coco.py': ('base_gf', ((14, 8), (7, 4)), 0.7, 2e-4, 0.8),
    'cascade_mask_rcnn_hornet_large_7x7_22k_3x_coco.py': ('large_7x7', None, 0.7, 1e-4, 0.7),
    'cascade_mask_rcnn_hornet_large_gf_22k_3x_coco.py': ('large_gf', ((24, 13), (12, 7)), 0.7, 1e-4, 0.7),
}
MASK_RCNN = {
    'mask_rcnn_hornet_small_7x7_fpn_1x_coco.py': ('FPN', None),
    'mask_rcnn_hornet_small_7x7_horfpn_7x7_1x_coco.py': ('HorFPN', 'dwconv'),
    'mask_rcnn_hornet_small_7x7_horfpn_gf_1x_coco.py': ('HorFPN', 'gf'),
}
# Parameter counts of the whole detector with the real backbone (80 classes). The published
# table rounds these to 80M (both HorNet-T Cascade Mask R-CNN models).
PARAMS_T = {'cascade_mask_rcnn_hornet_tiny_7x7_3x_coco.py': 79_883_634,
            'cascade_mask_rcnn_hornet_tiny_gf_3x_coco.py': 80_465_970}


def _load(name: str) -> Config:
    cfg = Config.fromfile(osp.join(CONFIG_DIR, name))  # imports models.mm_hornet, object_detection.horfpn
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = '/nonexistent/coco/'
    return cfg


def _build(cfg: Config):
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    return MODELS.build(cfg.model)


def test_config_set_is_complete():
    assert set(CONFIGS) == set(CASCADE) | set(MASK_RCNN)


@pytest.mark.parametrize('name', sorted(CASCADE))
def test_cascade_config(name):
    arch, gf, dp, lr, decay = CASCADE[name]
    cfg = _load(name)
    bb = cfg.model.backbone
    assert (bb.type, bb.arch, bb.drop_path_rate) == ('HorNet', arch, dp)
    assert bb.init_cfg.type == 'Pretrained' and bb.init_cfg.checkpoint.startswith('checkpoints/hornet_')
    assert cfg.optim_wrapper.constructor == 'HorNetLayerDecayOptimizerConstructor'
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=lr, betas=(0.9, 0.999), weight_decay=0.05)
    assert cfg.optim_wrapper.paramwise_cfg == dict(decay_rate=decay, decay_type='layer_wise', num_layers=12)
    assert cfg.train_cfg.max_epochs == 36 and cfg.param_scheduler[1].milestones == [27, 33]
    heads = cfg.model.roi_head.bbox_head
    assert [h.type for h in heads] == ['ConvFCBBoxHead'] * 3
    assert all(h.num_shared_convs == 4 and h.num_shared_fcs == 1 and h.reg_decoded_bbox
               and h.norm_cfg.type == 'SyncBN' and h.loss_bbox == dict(type='GIoULoss', loss_weight=10.0)
               for h in heads)
    aug = cfg.train_dataloader.dataset.pipeline[3]
    assert aug.type == 'RandomChoice'
    scales = aug.transforms[0][0].scales
    assert [s[0] for s in scales] == list(range(480, 801, 32)) and {s[1] for s in scales} == {1333}

    # build the detector (small stand-in trunk for S/B/L to keep CI fast; T uses the real one)
    if 'tiny' not in name:
        cfg.model.backbone.depths = (1, 1, 1, 1)
    model = _build(cfg)
    assert isinstance(model.backbone, HorNetBackbone)
    w = models.HORNET_ARCHS[arch]['base_dim']
    assert model.neck.in_channels == [w, 2 * w, 4 * w, 8 * w]
    gf_shapes = [tuple(m.complex_weight.shape[1:3]) for m in model.backbone.modules()
                 if isinstance(m, models.GlobalLocalFilter)]
    if gf is None:
        assert gf_shapes == []
    else:
        assert sorted(set(gf_shapes), reverse=True) == list(gf)
    n = sum(p.numel() for p in model.parameters())
    print(f'{name}: {n:,} parameters')
    if name in PARAMS_T:
        assert n == PARAMS_T[name]
        assert round(n / 1e6) == 80  # published: 80M


@pytest.mark.parametrize('name', sorted(MASK_RCNN))
def test_mask_rcnn_config(name):
    neck_type, mixer = MASK_RCNN[name]
    cfg = _load(name)
    assert cfg.model.type == 'MaskRCNN' and cfg.model.backbone.arch == 'small_7x7'
    assert cfg.model.backbone.drop_path_rate == 0.6
    assert cfg.optim_wrapper.optimizer.lr == 1e-4 and cfg.optim_wrapper.paramwise_cfg.decay_rate == 0.95
    assert cfg.train_cfg.max_epochs == 12
    cfg.model.backbone.depths = (1, 1, 1, 1)
    model = _build(cfg)
    assert type(model.neck).__name__ == neck_type
    if mixer is not None:
        gn = model.neck.fpn_convs[0].gnconv
        assert isinstance(gn, models.GnConv) and gn.order == 2 and gn.scale == 1.0
        assert isinstance(gn.proj_out, torch.nn.Conv2d)
        if mixer == 'gf':
            assert tuple(gn.dwconv.complex_weight.shape) == (192, 32, 17, 2)  # 128 + 256 channels mixed
        else:
            assert gn.dwconv.kernel_size == (7, 7)
    print(f'{name}: {sum(p.numel() for p in model.parameters()):,} parameters (stand-in trunk)')


def test_horfpn_forward_and_extra_levels():
    from object_detection.horfpn import HorFPN
    from models.mm_hornet import GnConvModule
    torch.manual_seed(0)
    neck = HorFPN([16, 32, 64, 128], 32, num_outs=5, mixer='gf', add_extra_convs='on_input',
                  norm_cfg=dict(type='GN', num_groups=4), act_cfg=dict(type='ReLU'))
    assert len(neck.fpn_convs) == 5 and all(isinstance(m, GnConvModule) for m in neck.fpn_convs)
    assert neck.fpn_convs[4].gnconv.proj_in.in_channels == 128 and neck.fpn_convs[4].stride == 2
    feats = [torch.randn(1, c, 32 // 2 ** i, 48 // 2 ** i) for i, c in enumerate([16, 32, 64, 128])]
    outs = neck(feats)
    assert [tuple(o.shape[2:]) for o in outs] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    assert all(o.shape[1] == 32 and o.min() >= 0 for o in outs)  # ReLU after the norm
    neck7 = HorFPN([16, 32, 64, 128], 32, num_outs=5)  # max-pooled extra level, as in Mask R-CNN
    outs7 = neck7(feats)
    assert len(neck7.fpn_convs) == 4 and torch.equal(outs7[4], outs7[3][:, :, ::2, ::2])
    with pytest.raises(ValueError, match='mixer'):
        HorFPN([16, 32], 32, num_outs=2, mixer='conv')


def test_get_flops_counts_fft_on_small_model():
    from object_detection.get_flops import build_detector, count_flops
    cfg = _load('cascade_mask_rcnn_hornet_tiny_gf_3x_coco.py')
    cfg.model.backbone.depths = (1, 1, 1, 1)
    r = count_flops(build_detector(cfg), (256, 320))
    assert r['fft_flops'] > 0 and r['flops'] > r['fft_flops']
    assert r['params'] > r['params_backbone'] > 0


@pytest.mark.parametrize('name, published_gflops', [
    ('cascade_mask_rcnn_hornet_tiny_7x7_3x_coco.py', 730),
    ('cascade_mask_rcnn_hornet_tiny_gf_3x_coco.py', 728),
])
def test_get_flops_reproduces_published_table(name, published_gflops):
    from object_detection.get_flops import build_detector, count_flops
    r = count_flops(build_detector(_load(name)), (800, 1280))
    print(f'{name}: {r["flops"] / 1e9:.1f} GFLOPs at 1280x800, {r["params"] / 1e6:.2f} M params')
    assert abs(r['flops'] / 1e9 - published_gflops) / published_gflops < 0.005
    assert round(r['params'] / 1e6) == 80
