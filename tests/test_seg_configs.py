"""semantic_segmentation/configs: every merged config has the original recipe (reference sections 0, 3, 4, 8),
and the UperNet lr schedule equals the original at every iteration."""
import copy
import functools
import glob
import inspect
import os

import mmseg  # noqa: F401  (a missing OpenMMLab stack must fail, not skip)
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS

from helpers import plain, quick_tier
from models import GlobalLocalFilter
from models.mm_hornet import HorNetBackbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, 'semantic_segmentation', 'configs', 'hornet')

# One row per config, copied from the reference: (arch, base_dim, drop path, GF (h, w) stage 2 / stage 3
# or None, use_checkpoint, decay_rate r, num_layers n, grad clip max_norm or None, crop, slide stride,
# decode head, gnConv mixer of the HorFPN head).
GF = ((24, 13), (12, 7))
SEG_TABLE = {
    'upernet_hornet_tiny_7x7_512_160k_ade20k.py':
        ('tiny_7x7', 64, 0.4, None, False, 0.9, 6, None, 512, 341, 'UPerHead', None),
    'upernet_hornet_tiny_gf_512_160k_ade20k.py':
        ('tiny_gf', 64, 0.4, GF, False, 0.9, 6, 1.0, 512, 341, 'UPerHead', None),
    'upernet_hornet_small_7x7_512_160k_ade20k.py':
        ('small_7x7', 96, 0.3, None, False, 0.9, 12, None, 512, 341, 'UPerHead', None),
    'upernet_hornet_small_gf_512_160k_ade20k.py':
        ('small_gf', 96, 0.3, GF, False, 0.9, 12, 1.0, 512, 341, 'UPerHead', None),
    'upernet_hornet_base_7x7_512_160k_ade20k.py':
        ('base_7x7', 128, 0.4, None, False, 0.9, 12, None, 512, 341, 'UPerHead', None),
    'upernet_hornet_base_gf_512_160k_ade20k.py':
        ('base_gf', 128, 0.5, GF, False, 0.9, 12, 1.0, 512, 341, 'UPerHead', None),
    'upernet_hornet_large_7x7_640_160k_ade20k.py':
        ('large_7x7', 192, 0.4, None, False, 0.8, 12, None, 640, 426, 'UPerHead', None),
    'upernet_hornet_large_gf_640_160k_ade20k.py':
        ('large_gf', 192, 0.4, GF, True, 0.8, 12, 0.1, 640, 426, 'UPerHead', None),
    'upernet_horfpn_7x7_hornet_small_7x7_512_160k_ade20k.py':
        ('small_7x7', 96, 0.3, None, False, 0.9, 12, None, 512, 341, 'HorFPNHead', 'dwconv'),
    'upernet_horfpn_gf_hornet_small_7x7_512_160k_ade20k.py':
        ('small_7x7', 96, 0.3, None, False, 0.9, 12, 0.1, 512, 341, 'HorFPNHead', 'gf'),
}


@functools.cache
def _parse(name: str) -> Config:
    return Config.fromfile(os.path.join(CONFIG_DIR, name))  # runs custom_imports


def load_config(name: str) -> Config:
    return copy.deepcopy(_parse(name))



def _steps(pipeline) -> list:
    return [(t['type'], {k: plain(v) for k, v in t.items() if k not in ('type', 'backend_args')})
            for t in pipeline]


def test_config_set_is_complete():
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIG_DIR, '*.py'))) == sorted(SEG_TABLE)


@pytest.mark.parametrize('name', quick_tier(sorted(SEG_TABLE), ['upernet_hornet_large_gf_640_160k_ade20k.py',
                                                        'upernet_horfpn_gf_hornet_small_7x7_512_160k_ade20k.py']))
def test_config_matches_reference(name):
    arch, dim, dpr, gf, with_cp, r, n, clip, crop, stride, head, mixer = SEG_TABLE[name]
    cfg = load_config(name)
    dims = [dim, 2 * dim, 4 * dim, 8 * dim]
    # backbone (built on the meta device: real depths and filters, no memory)
    bb = cfg.model.backbone
    assert (bb.type, bb.arch, bb.drop_path_rate, bb.with_cp) == ('HorNet', arch, dpr, with_cp)
    assert tuple(bb.out_indices) == (0, 1, 2, 3) and 'layer_scale_init_value' not in bb
    assert inspect.signature(HorNetBackbone).parameters['layer_scale_init_value'].default == 1e-6
    assert bb.init_cfg == dict(type='Pretrained', checkpoint=f'pretrained/hornet_{arch}.pth')
    with torch.device('meta'):
        backbone = MODELS.build({k: v for k, v in bb.items() if k != 'init_cfg'})
    assert backbone.depths == (2, 3, 18, 2) and backbone.out_channels == dims and backbone.with_cp is with_cp
    assert [len(s[0].gnconv.dims) for s in backbone.stages] == [2, 3, 4, 5]
    # gate scale 1/3 everywhere; every stage without GF mixes with a depthwise 7x7 conv with bias
    assert all(b.gnconv.scale == pytest.approx(1 / 3) for s in backbone.stages for b in s)
    assert all(b.gnconv.dwconv.kernel_size == (7, 7) and b.gnconv.dwconv.bias is not None
               for s in backbone.stages for b in s if not isinstance(b.gnconv.dwconv, GlobalLocalFilter))
    assert backbone.stages[3][-1].drop_path.drop_prob == pytest.approx(dpr)
    gf_sizes = [tuple(s[0].gnconv.dwconv.complex_weight.shape[1:3]) for s in backbone.stages
                if isinstance(s[0].gnconv.dwconv, GlobalLocalFilter)]
    assert gf_sizes == ([] if gf is None else list(gf))
    # heads
    dh, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert (dh.type, dh.in_channels, dh.channels, tuple(dh.pool_scales), dh.dropout_ratio, dh.num_classes) == \
        (head, dims, 512, (1, 2, 3, 6), 0.1, 150)
    assert dh.norm_cfg.type == 'SyncBN' and dh.get('conv_cfg') is None
    if mixer is not None:
        assert dh.gnconv_mixer == mixer
        assert dh.gnconv_kernel_size == 7 if mixer == 'dwconv' else tuple(dh.gnconv_filter_size) == (32, 17)
    assert (aux.type, aux.in_index, aux.in_channels, aux.channels, aux.num_convs, aux.loss_decode.loss_weight) == \
        ('FCNHead', 2, dims[2], 256, 1, 0.4)
    # optimizer, stage-wise decay, clipping, fp32
    ow = cfg.optim_wrapper
    assert ow.type == 'OptimWrapper'
    assert plain(ow.optimizer) == dict(type='AdamW', lr=1e-4, betas=[0.9, 0.999], weight_decay=0.05)
    assert ow.constructor == 'HorNetLayerDecayOptimizerConstructor'
    assert ow.paramwise_cfg == dict(decay_rate=r, decay_type='stage_wise', num_layers=n)
    assert ow.get('clip_grad') == (None if clip is None else dict(max_norm=clip, norm_type=2))
    # 160k iterations; warmup + poly (values checked iteration by iteration below)
    assert (cfg.train_cfg.type, cfg.train_cfg.max_iters, cfg.train_cfg.val_interval) == \
        ('IterBasedTrainLoop', 160000, 16000)
    assert plain(cfg.param_scheduler) == [
        dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1501),
        dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=160001)]
    assert (cfg.default_hooks.checkpoint.by_epoch, cfg.default_hooks.checkpoint.interval) == (False, 16000)
    assert cfg.val_evaluator.iou_metrics == ['mIoU']
    # data: 2 images per GPU; the original train pipeline; pad to the crop (0 / 255)
    assert cfg.train_dataloader.batch_size == 2
    assert _steps(cfg.train_dataloader.dataset.pipeline) == [
        ('LoadImageFromFile', {}),
        ('LoadAnnotations', dict(reduce_zero_label=True)),
        ('RandomResize', dict(scale=[4 * crop, crop], ratio_range=[0.5, 2.0], keep_ratio=True)),
        ('RandomCrop', dict(crop_size=[crop, crop], cat_max_ratio=0.75)),
        ('RandomFlip', dict(prob=0.5)),
        ('PhotoMetricDistortion', {}),
        ('PackSegInputs', {})]
    dp = cfg.model.data_preprocessor
    assert (tuple(dp.size), dp.pad_val, dp.seg_pad_val) == ((crop, crop), 0, 255)
    assert (dp.mean, dp.std, dp.bgr_to_rgb) == ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], True)
    # test: single scale (4c, c) keep ratio, no flip, slide crop / stride; --aug-test ratios with flip
    assert _steps(cfg.test_dataloader.dataset.pipeline)[:2] == [
        ('LoadImageFromFile', {}), ('Resize', dict(scale=[4 * crop, crop], keep_ratio=True))]
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(crop, crop), stride=(stride, stride))
    resizes = cfg.tta_pipeline[1].transforms[0]
    assert [tuple(t.scale) for t in resizes] == [(int(4 * crop * q), int(crop * q))
                                                 for q in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)]
    assert [t.prob for t in cfg.tta_pipeline[1].transforms[1]] == [0.0, 1.0]


def _original_lr(base: float, i: int) -> float:
    """mmcv: poly over the whole run from iteration 0, times the linear warmup factor (ratio 1e-6)."""
    lr = base * (1 - i / 160000) ** 1.0
    if i < 1500:
        lr *= 1 - (1 - i / 1500) * (1 - 1e-6)
    return lr


@pytest.mark.slow
def test_upernet_lr_equals_original_at_every_iteration():
    """The config's schedulers, built and stepped as the runner's ParamSchedulerHook steps them on a
    layer-decay optimizer, give the original lr for every group at every one of the 160k iterations
    (iterations 0, 750, 1500, 80000, 159999 named explicitly)."""
    from types import SimpleNamespace

    from mmengine.hooks import ParamSchedulerHook
    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS
    cfg = load_config('upernet_hornet_small_gf_512_160k_ade20k.py')
    base = cfg.optim_wrapper.optimizer.lr
    scales = [0.9 ** 13, 0.9 ** 10, 1.0]  # downsample layers, stage 2, heads (n = 12)
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in scales]
    groups = [dict(params=[p], lr=base * s) for p, s in zip(params, scales, strict=True)]
    wrapper = OptimWrapper(torch.optim.AdamW(groups, lr=base))
    runner = SimpleNamespace(param_schedulers=[PARAM_SCHEDULERS.build(dict(s, optimizer=wrapper))
                                               for s in cfg.param_scheduler])
    hook = ParamSchedulerHook()
    named = {}
    worst = 0.0
    for i in range(cfg.train_cfg.max_iters):
        lrs = [g['lr'] for g in wrapper.param_groups if g['params']]  # not mmengine's base-lr entry
        for lr, s in zip(lrs, scales, strict=True):
            worst = max(worst, abs(lr - _original_lr(base * s, i)) / _original_lr(base * s, i))
        if i in (0, 750, 1500, 80000, 159999):
            named[i] = lrs[2]
        hook.after_train_iter(runner, i)  # no optimizer step needed: the lr alone is checked
    assert worst < 1e-9
    assert named[0] == pytest.approx(1e-4 * 1e-6, rel=1e-9)
    assert named[750] == pytest.approx(1e-4 * (1 - 750 / 160000) * (1e-6 + (1 - 1e-6) * 0.5), rel=1e-9)
    assert named[1500] == pytest.approx(1e-4 * (1 - 1500 / 160000), rel=1e-9)
    assert named[80000] == pytest.approx(0.5e-4, rel=1e-9)
    assert named[159999] == pytest.approx(1e-4 / 160000, rel=1e-9)
