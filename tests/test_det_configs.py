"""object_detection/: every merged config has the reference recipe; HorFPN structure and forward."""
import copy
import functools
import glob
import inspect
import os.path as osp

import mmcv.ops  # noqa: F401  (compiled ops must be present)
import mmdet
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import models
from helpers import ROOT, plain, quick_tier
from models.mm_hornet import HorNetBackbone

CONFIG_DIR = osp.join(ROOT, 'object_detection', 'configs')
CONFIGS = sorted(osp.basename(p) for p in glob.glob(osp.join(CONFIG_DIR, '*.py')))

# Reference sections 0-2 and 8, one row per config, copied: (model type, arch, base_dim, drop path,
# GF (h, w) of stage 2 / stage 3 or None, neck type, gnConv mixer of the neck, lr, decay_rate r,
# num_layers n, epochs, lr steps, pretrained file).
C3X = ('CascadeRCNN', 36, [27, 33])
M1X = ('MaskRCNN', 12, [8, 11])
DET_TABLE = {
    'cascade_mask_rcnn_hornet_tiny_7x7_3x_coco.py':
        (C3X, 'tiny_7x7', 64, 0.4, None, 'FPN', None, 2e-4, 0.7, 12, 'hornet_tiny_7x7.pth'),
    'cascade_mask_rcnn_hornet_tiny_gf_3x_coco.py':
        (C3X, 'tiny_gf', 64, 0.4, ((14, 8), (7, 4)), 'FPN', None, 2e-4, 0.7, 12, 'hornet_tiny_gf.pth'),
    'cascade_mask_rcnn_hornet_small_7x7_3x_coco.py':
        (C3X, 'small_7x7', 96, 0.6, None, 'FPN', None, 2e-4, 0.7, 12, 'hornet_small_7x7.pth'),
    'cascade_mask_rcnn_hornet_small_gf_3x_coco.py':
        (C3X, 'small_gf', 96, 0.6, ((14, 8), (7, 4)), 'FPN', None, 2e-4, 0.7, 12, 'hornet_small_gf.pth'),
    'cascade_mask_rcnn_hornet_base_7x7_3x_coco.py':
        (C3X, 'base_7x7', 128, 0.7, None, 'FPN', None, 2e-4, 0.8, 12, 'hornet_base_7x7.pth'),
    'cascade_mask_rcnn_hornet_base_gf_3x_coco.py':
        (C3X, 'base_gf', 128, 0.7, ((14, 8), (7, 4)), 'FPN', None, 2e-4, 0.8, 12, 'hornet_base_gf.pth'),
    'cascade_mask_rcnn_hornet_large_7x7_22k_3x_coco.py':
        (C3X, 'large_7x7', 192, 0.7, None, 'FPN', None, 1e-4, 0.7, 12, 'hornet_large_7x7_in22k.pth'),
    'cascade_mask_rcnn_hornet_large_gf_22k_3x_coco.py':
        (C3X, 'large_gf', 192, 0.7, ((24, 13), (12, 7)), 'FPN', None, 1e-4, 0.7, 12, 'hornet_large_gf_in22k.pth'),
    'mask_rcnn_hornet_small_7x7_fpn_1x_coco.py':
        (M1X, 'small_7x7', 96, 0.6, None, 'FPN', None, 1e-4, 0.95, 6, 'hornet_small_7x7.pth'),
    'mask_rcnn_hornet_small_7x7_horfpn_7x7_1x_coco.py':
        (M1X, 'small_7x7', 96, 0.6, None, 'HorFPN', 'dwconv', 1e-4, 0.95, 6, 'hornet_small_7x7.pth'),
    'mask_rcnn_hornet_small_7x7_horfpn_gf_1x_coco.py':
        (M1X, 'small_7x7', 96, 0.6, None, 'HorFPN', 'gf', 1e-4, 0.95, 6, 'hornet_small_7x7.pth'),
}
# det-MS (reference section 1): flip, then one of two policies; the scales are (short side, long side max)
MS = [(s, 1333) for s in range(480, 801, 32)]
DET_MS = [
    ('LoadImageFromFile', {}),
    ('LoadAnnotations', dict(with_bbox=True, with_mask=True)),
    ('RandomFlip', dict(prob=0.5)),
    ('RandomChoice', dict(transforms=[
        [dict(type='RandomChoiceResize', scales=MS, keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
         dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
         dict(type='RandomChoiceResize', scales=MS, keep_ratio=True)]])),
    ('PackDetInputs', {}),
]
# Parameter counts of the whole detector with the real backbone (80 classes). The published
# table rounds these to 80M (both HorNet-T Cascade Mask R-CNN models).
PARAMS_T = {'cascade_mask_rcnn_hornet_tiny_7x7_3x_coco.py': 79_883_634,
            'cascade_mask_rcnn_hornet_tiny_gf_3x_coco.py': 80_465_970}


@functools.cache
def _parse(name: str) -> Config:
    cfg = Config.fromfile(osp.join(CONFIG_DIR, name))  # imports models.mm_hornet, object_detection.horfpn
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = '/nonexistent/coco/'
    return cfg


def _load(name: str) -> Config:
    return copy.deepcopy(_parse(name))  # parsing takes ~1 s; tests may edit their copy


def _build(cfg: Config):
    init_default_scope('mmdet')
    return mmdet.registry.MODELS.build(cfg.model)


def test_config_set_is_complete():
    assert set(CONFIGS) == set(DET_TABLE)



@pytest.mark.parametrize('name', quick_tier(sorted(DET_TABLE), ['cascade_mask_rcnn_hornet_tiny_gf_3x_coco.py',
                                                        'mask_rcnn_hornet_small_7x7_horfpn_gf_1x_coco.py']))
def test_config_matches_reference(name):
    """Every number of reference sections 0-2 in the merged config (and the backbone it builds)."""
    (model_type, epochs, steps), arch, dim, dpr, gf, neck_type, mixer, lr, r, n, ckpt = DET_TABLE[name]
    cfg = _load(name)
    # backbone
    bb = cfg.model.backbone
    assert (cfg.model.type, bb.type, bb.arch, bb.drop_path_rate) == (model_type, 'HorNet', arch, dpr)
    assert tuple(bb.out_indices) == (0, 1, 2, 3) and bb.with_cp is False
    assert 'layer_scale_init_value' not in bb  # the default, 1e-6, as the original
    assert inspect.signature(HorNetBackbone).parameters['layer_scale_init_value'].default == 1e-6
    assert bb.init_cfg == dict(type='Pretrained', checkpoint=f'checkpoints/{ckpt}')
    with torch.device('meta'):
        backbone = MODELS.build({k: v for k, v in bb.items() if k != 'init_cfg'})
    assert backbone.depths == (2, 3, 18, 2) and backbone.out_channels == [dim, 2 * dim, 4 * dim, 8 * dim]
    assert [type(m.gnconv.dwconv).__name__ for m in backbone.stages[1]] == ['Conv2d'] * 3
    # gate scale 1/3 everywhere; every stage without GF mixes with a depthwise 7x7 conv with bias
    assert all(b.gnconv.scale == pytest.approx(1 / 3) for s in backbone.stages for b in s)
    assert all(b.gnconv.dwconv.kernel_size == (7, 7) and b.gnconv.dwconv.bias is not None
               for s in backbone.stages for b in s if not isinstance(b.gnconv.dwconv, models.GlobalLocalFilter))
    assert [len(s[0].gnconv.dims) for s in backbone.stages] == [2, 3, 4, 5]  # orders
    gf_sizes = [tuple(m.gnconv.dwconv.complex_weight.shape[1:3]) for s in backbone.stages[2:] for m in s[:1]
                if isinstance(m.gnconv.dwconv, models.GlobalLocalFilter)]
    assert gf_sizes == ([] if gf is None else list(gf))
    assert backbone.stages[3][-1].drop_path.drop_prob == pytest.approx(dpr)
    # neck
    neck = cfg.model.neck
    assert (neck.type, neck.in_channels, neck.out_channels, neck.num_outs) == \
        (neck_type, [dim, 2 * dim, 4 * dim, 8 * dim], 256, 5)
    assert neck.get('add_extra_convs', False) is False
    if mixer is not None:
        assert (neck.mixer, neck.order) == (mixer, 2)
        assert neck.kernel_size == 7 if mixer == 'dwconv' else tuple(neck.filter_size) == (32, 17)
    # optimizer, layer decay, clipping (none), precision (fp32)
    ow = cfg.optim_wrapper
    assert ow.type == 'OptimWrapper' and ow.get('clip_grad') is None
    assert plain(ow.optimizer) == dict(type='AdamW', lr=lr, betas=[0.9, 0.999], weight_decay=0.05)
    assert ow.constructor == 'HorNetLayerDecayOptimizerConstructor'
    assert ow.paramwise_cfg == dict(decay_rate=r, decay_type='layer_wise', num_layers=n)
    # schedule: 500-iteration linear warmup from 0.001 (mmengine end = 501, see test below), steps
    assert cfg.train_cfg.type == 'EpochBasedTrainLoop' and cfg.train_cfg.max_epochs == epochs
    assert plain(cfg.param_scheduler) == [
        dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=501),
        dict(type='MultiStepLR', begin=0, end=epochs, by_epoch=True, milestones=steps, gamma=0.1)]
    assert cfg.auto_scale_lr.enable is False
    # data: 2 images per GPU, det-MS training, single-scale (1333, 800) test, bbox + segm every epoch
    assert cfg.train_dataloader.batch_size == 2
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert [[t.type, {k: plain(v) for k, v in t.items() if k not in ('type', 'backend_args')}]
            for t in pipeline] == plain(DET_MS)
    dp = cfg.model.data_preprocessor
    assert (dp.mean, dp.std, dp.bgr_to_rgb, dp.pad_size_divisor) == \
        ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], True, 32)
    resize = [t for t in cfg.test_dataloader.dataset.pipeline if t.type == 'Resize']
    assert [(tuple(t.scale), t.keep_ratio) for t in resize] == [((1333, 800), True)]
    assert not any(t.type == 'RandomFlip' for t in cfg.test_dataloader.dataset.pipeline)
    assert cfg.val_evaluator.metric == ['bbox', 'segm'] and cfg.train_cfg.val_interval == 1
    assert cfg.default_hooks.checkpoint.interval == 1
    rcnn = cfg.model.test_cfg.rcnn
    assert (rcnn.score_thr, rcnn.nms.iou_threshold, rcnn.max_per_img, rcnn.mask_thr_binary) == (0.05, 0.5, 100, 0.5)


@pytest.mark.parametrize('name', sorted(n for n in DET_TABLE if n.startswith('cascade')))
def test_cascade_heads_match_reference(name):
    cfg = _load(name)
    rh = cfg.model.roi_head
    assert rh.type == 'CascadeRoIHead' and rh.num_stages == 3 and rh.stage_loss_weights == [1, 0.5, 0.25]
    assert [h.type for h in rh.bbox_head] == ['ConvFCBBoxHead'] * 3
    assert [h.bbox_coder.target_stds for h in rh.bbox_head] == \
        [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
    for h in rh.bbox_head:
        assert (h.num_shared_convs, h.num_shared_fcs, h.conv_out_channels, h.fc_out_channels) == (4, 1, 256, 1024)
        assert h.reg_decoded_bbox is True and h.reg_class_agnostic is False and h.norm_cfg.type == 'SyncBN'
        assert h.loss_bbox == dict(type='GIoULoss', loss_weight=10.0) and h.loss_cls.type == 'CrossEntropyLoss'
    assert [a.pos_iou_thr for a in (s.assigner for s in cfg.model.train_cfg.rcnn)] == [0.5, 0.6, 0.7]
    assert rh.mask_roi_extractor.roi_layer.output_size == 14 and rh.mask_head.num_convs == 4
    rpn = cfg.model.rpn_head
    assert rpn.anchor_generator.scales == [8] and rpn.anchor_generator.ratios == [0.5, 1.0, 2.0]
    assert rpn.anchor_generator.strides == [4, 8, 16, 32, 64]
    assert rpn.loss_bbox == dict(type='SmoothL1Loss', beta=1.0 / 9.0, loss_weight=1.0)


@pytest.mark.parametrize('name', sorted(n for n in DET_TABLE if n.startswith('mask_rcnn')))
def test_mask_rcnn_heads_match_reference(name):
    cfg = _load(name)
    bh = cfg.model.roi_head.bbox_head
    assert bh.type == 'Shared2FCBBoxHead' and bh.reg_class_agnostic is False
    assert bh.bbox_coder.target_stds == [0.1, 0.1, 0.2, 0.2] and bh.loss_bbox.type == 'L1Loss'
    assert cfg.model.rpn_head.loss_bbox.type == 'L1Loss' and cfg.model.roi_head.mask_head.type == 'FCNMaskHead'


def test_lr_schedule_equals_mmcv_warmup_and_steps():
    """The runner's scheduler objects (built from the merged config, stepped as ParamSchedulerHook
    steps them) give mmcv's lr at every iteration: base * (1 - (1 - i/500)(1 - 0.001)) for i < 500,
    times 0.1 per passed step epoch. Short epochs (40 iterations) so the run covers every phase."""
    from types import SimpleNamespace

    from mmengine.hooks import ParamSchedulerHook
    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS
    for name, (epochs, steps) in (('cascade_mask_rcnn_hornet_tiny_7x7_3x_coco.py', (36, [27, 33])),
                                  ('mask_rcnn_hornet_small_7x7_fpn_1x_coco.py', (12, [8, 11]))):
        cfg = _load(name)
        base = cfg.optim_wrapper.optimizer.lr
        wrapper = OptimWrapper(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base))
        runner = SimpleNamespace(param_schedulers=[
            PARAM_SCHEDULERS.build(dict(s, optimizer=wrapper)) for s in cfg.param_scheduler])
        hook = ParamSchedulerHook()
        epoch_len, it = 40, 0
        for epoch in range(epochs):
            for i in range(epoch_len):
                warm = 1 - (1 - it / 500) * (1 - 0.001) if it < 500 else 1.0
                expected = base * warm * 0.1 ** sum(epoch >= s for s in steps)
                assert wrapper.param_groups[0]['lr'] == pytest.approx(expected, rel=1e-9), (name, it)
                hook.after_train_iter(runner, i)  # the lr alone is checked: no optimizer step
                it += 1
            hook.after_train_epoch(runner)


def test_det_ms_pipeline_scales():
    """The det-MS pipeline as built by mmdet: the short side always ends in {480, 512, ..., 800}."""
    import numpy as np
    from mmdet.registry import TRANSFORMS
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks
    init_default_scope('mmdet')
    cfg = _load('mask_rcnn_hornet_small_7x7_horfpn_gf_1x_coco.py')
    steps = [TRANSFORMS.build(t) for t in cfg.train_dataloader.dataset.pipeline[2:4]]
    rng = np.random.default_rng(0)
    np.random.seed(0)
    seen = set()
    for _ in range(24):
        img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        masks = np.zeros((1, 480, 640), np.uint8)
        masks[0, 100:380, 100:540] = 1
        res = dict(img=img, img_shape=(480, 640), ori_shape=(480, 640),
                   gt_bboxes=HorizontalBoxes(torch.tensor([[100., 100., 540., 380.]])),
                   gt_bboxes_labels=np.array([0]), gt_ignore_flags=np.array([False]),
                   gt_masks=BitmapMasks(masks, 480, 640))
        for t in steps:
            res = t(res)
        h, w = res['img'].shape[:2]
        assert min(h, w) in range(480, 801, 32) and max(h, w) <= 1333
        seen.add(min(h, w))
    assert len(seen) > 5


@pytest.mark.parametrize('name', sorted(PARAMS_T))
def test_tiny_cascade_builds_with_published_size(name):
    model = _build(_load(name))
    assert isinstance(model.backbone, HorNetBackbone)
    n = sum(p.numel() for p in model.parameters())
    assert n == PARAMS_T[name] and round(n / 1e6) == 80  # published: 80M


@pytest.mark.parametrize('mixer', ['dwconv', 'gf'])
def test_horfpn_neck_matches_reference(mixer):
    """Reference 6a (GNFPN): the 4 fpn_convs are order-2 gnConv modules 256 -> 256 (proj_in 256 -> 512,
    mixer on 384 channels, pws 128 -> 256, proj_out 256 -> 256, gate scale 1) with no norm and no
    activation; the 1x1 laterals are FPN's; P6 is a max-pool of P5; Xavier-uniform on every conv."""
    from models.mm_hornet import GnConvModule
    cfg = _load(f'mask_rcnn_hornet_small_7x7_horfpn_{"7x7" if mixer == "dwconv" else "gf"}_1x_coco.py')
    cfg.model.backbone.update(depths=(1, 1, 1, 1), init_cfg=None)
    model = _build(cfg)
    model.init_weights()
    neck = model.neck
    assert type(neck).__name__ == 'HorFPN' and len(neck.fpn_convs) == 4
    for m in neck.fpn_convs:
        assert isinstance(m, GnConvModule) and isinstance(m.norm, torch.nn.Identity)
        assert isinstance(m.act, torch.nn.Identity) and m.stride == 1
        g = m.gnconv
        assert (g.order, g.scale, g.dims) == (2, 1.0, [128, 256])
        shapes = {k: tuple(v.shape) for k, v in g.named_parameters()}
        expected = {'proj_in.weight': (512, 256, 1, 1), 'proj_in.bias': (512,),
                    'pws.0.weight': (256, 128, 1, 1), 'pws.0.bias': (256,),
                    'proj_out.weight': (256, 256, 1, 1), 'proj_out.bias': (256,)}
        if mixer == 'dwconv':
            expected.update({'dwconv.weight': (384, 1, 7, 7), 'dwconv.bias': (384,)})
        else:
            expected.update({'dwconv.dw.weight': (192, 1, 3, 3), 'dwconv.complex_weight': (192, 32, 17, 2),
                             'dwconv.pre_norm.weight': (384,), 'dwconv.pre_norm.bias': (384,),
                             'dwconv.post_norm.weight': (384,), 'dwconv.post_norm.bias': (384,)})
        assert shapes == expected
        for conv in (c for c in m.modules() if isinstance(c, torch.nn.Conv2d)):
            fan_in = conv.weight[0].numel()
            fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
            bound = (6 / (fan_in + fan_out)) ** 0.5
            w = conv.weight.detach().abs()
            assert w.max() <= bound and w.max() > 0.9 * bound  # Xavier uniform
            assert conv.bias is None or not conv.bias.detach().any()
    assert [(c.conv.kernel_size, c.conv.out_channels, c.norm_cfg, c.with_activation) for c in neck.lateral_convs] \
        == [((1, 1), 256, None, False)] * 4
    feats = [torch.randn(1, c, 64 // 2 ** i, 96 // 2 ** i) for i, c in enumerate([96, 192, 384, 768])]
    with torch.no_grad():
        outs = neck(feats)
    assert len(outs) == 5 and torch.equal(outs[4], outs[3][:, :, ::2, ::2])


def test_horfpn_forward_and_extra_levels():
    from models.mm_hornet import GnConvModule
    from object_detection.horfpn import HorFPN
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


@pytest.mark.slow
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
