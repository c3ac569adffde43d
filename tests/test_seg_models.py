"""ADE20K segmentation configs, the HorFPN head and slide inference (mmsegmentation 1.x, CPU)."""
import copy
import functools
import glob
import os

import mmseg  # noqa: F401  (a missing OpenMMLab stack must fail, not skip)
import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmseg.models.decode_heads import UPerHead
from mmseg.registry import MODELS

from helpers import ROOT, quick_tier
from models import GlobalLocalFilter
from semantic_segmentation.get_flops import count_flops

SEG_DIR = os.path.join(ROOT, 'semantic_segmentation')
CONFIG_DIR = os.path.join(SEG_DIR, 'configs', 'hornet')

# name -> (arch, drop path, lr decay, crop, dims) as in the reference
EXPECTED = {
    'upernet_hornet_tiny_7x7_512_160k_ade20k.py': ('tiny_7x7', 0.4, 0.9, 512, 64),
    'upernet_hornet_tiny_gf_512_160k_ade20k.py': ('tiny_gf', 0.4, 0.9, 512, 64),
    'upernet_hornet_small_7x7_512_160k_ade20k.py': ('small_7x7', 0.3, 0.9, 512, 96),
    'upernet_hornet_small_gf_512_160k_ade20k.py': ('small_gf', 0.3, 0.9, 512, 96),
    'upernet_hornet_base_7x7_512_160k_ade20k.py': ('base_7x7', 0.4, 0.9, 512, 128),
    'upernet_hornet_base_gf_512_160k_ade20k.py': ('base_gf', 0.5, 0.9, 512, 128),
    'upernet_hornet_large_7x7_640_160k_ade20k.py': ('large_7x7', 0.4, 0.8, 640, 192),
    'upernet_hornet_large_gf_640_160k_ade20k.py': ('large_gf', 0.4, 0.8, 640, 192),
    'upernet_horfpn_7x7_hornet_small_7x7_512_160k_ade20k.py': ('small_7x7', 0.3, 0.9, 512, 96),
    'upernet_horfpn_gf_hornet_small_7x7_512_160k_ade20k.py': ('small_7x7', 0.3, 0.9, 512, 96),
}


@functools.cache
def _parse(name: str) -> Config:
    return Config.fromfile(os.path.join(CONFIG_DIR, name))  # runs custom_imports


def load_config(name: str) -> Config:
    return copy.deepcopy(_parse(name))  # parsing is slow (mmseg:: lookups); tests may edit the copy


def build_segmentor(cfg: Config, **backbone_overrides) -> torch.nn.Module:
    init_default_scope('mmseg')
    cfg.model.backbone.pop('init_cfg', None)  # no classification checkpoint in tests
    cfg.model.backbone.update(backbone_overrides)
    return revert_sync_batchnorm(MODELS.build(cfg.model))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_config_set_is_complete():
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIG_DIR, '*.py'))) == sorted(EXPECTED)


@pytest.mark.parametrize('name', quick_tier(sorted(EXPECTED), ['upernet_hornet_tiny_gf_512_160k_ade20k.py']))
def test_config_builds_and_runs(name):
    """Every config builds (one block per stage, real widths) and runs its decode and auxiliary heads;
    the recipe numbers of every config are checked in test_seg_configs.py."""
    dim = EXPECTED[name][4]
    cfg = load_config(name)
    dims = [dim * 2 ** i for i in range(4)]
    # build (one block per stage, real widths) and run the decode + auxiliary heads
    model = build_segmentor(cfg, depths=(1, 1, 1, 1)).eval()
    head_type = cfg.model.decode_head.type
    assert type(model.decode_head).__name__ == head_type
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 64, 64))
        logits = model.decode_head(feats)
        aux_logits = model.auxiliary_head(feats)
    assert [f.shape[1] for f in feats] == dims
    assert logits.shape == (1, 150, 16, 16) and aux_logits.shape == (1, 150, 4, 4)
    assert torch.isfinite(logits).all()


# published params (M) and FLOPs (G, 512x2048) of the UperNet models with HorNet-T backbones
@pytest.mark.slow
@pytest.mark.parametrize('name,published_m,published_g', [
    ('upernet_hornet_tiny_7x7_512_160k_ade20k.py', 52, 926),
    ('upernet_hornet_tiny_gf_512_160k_ade20k.py', 55, 924),
])
def test_tiny_configs_real_backbone(name, published_m, published_g):
    cfg = load_config(name)
    model = build_segmentor(cfg)
    assert model.backbone.depths == (2, 3, 18, 2)
    total = n_params(model)
    n_params_aux = n_params(model.auxiliary_head)
    assert round(total / 1e6) == published_m, total
    gf = [m for m in model.backbone.modules() if isinstance(m, GlobalLocalFilter)]
    assert [tuple(m.complex_weight.shape[1:3]) for m in gf] == \
        ([(24, 13)] * 18 + [(12, 7)] * 2 if '_gf_' in name else [])

    # stage-wise lr decay: 8 groups, scale 0.9 ** (7 - group); heads at the base lr
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lr_of = {id(p): g['lr'] for g in wrapper.optimizer.param_groups for p in g['params']}
    wd_of = {id(p): g['weight_decay'] for g in wrapper.optimizer.param_groups for p in g['params']}
    bb = model.backbone
    assert lr_of[id(bb.downsample_layers[0][0].weight)] == pytest.approx(1e-4 * 0.9 ** 7)
    assert lr_of[id(bb.downsample_layers[2][1].weight)] == pytest.approx(1e-4 * 0.9 ** 7)
    assert lr_of[id(bb.stages[2][5].pwconv1.weight)] == pytest.approx(1e-4 * 0.9 ** 4)
    assert lr_of[id(bb.stages[3][1].pwconv2.weight)] == pytest.approx(1e-4 * 0.9 ** 3)
    assert lr_of[id(model.decode_head.conv_seg.weight)] == pytest.approx(1e-4)
    assert wd_of[id(bb.stages[3][1].pwconv2.weight)] == 0.05 and wd_of[id(bb.stages[3][1].gamma1)] == 0.0
    # reference: T 7x7 trains without clipping, T GF clips at norm 1
    clip = None if '_7x7_' in name else dict(max_norm=1.0, norm_type=2)
    assert getattr(wrapper, 'clip_grad_kwargs', None) == clip

    # get_flops.py: backbone + decode head on the meta device (moves the model there: last)
    result = count_flops(model, (512, 2048))
    assert abs(result['flops'] / 1e9 - published_g) < 1.5, result  # 925.2 / 924.0 observed
    assert result['params'] == total and result['params_aux'] == n_params_aux
    assert (result['fft_flops'] > 0) == ('_gf_' in name)


@pytest.mark.parametrize('mixer', ['7x7', 'gf'])
def test_horfpn_head_matches_reference(mixer):
    """Reference 6b (GNUPerHead) at full width: the fpn_bottleneck (4 x 512 -> 512) is an order-2 gnConv
    (proj_in 2048 -> 1024, mixer on 768 channels, no gate scale, pws 256 -> 512, proj_out 512 -> 512)
    followed by SyncBN and ReLU; the three fpn_convs stay 3x3 ConvModules; the rest is UPerHead's."""
    from mmcv.cnn import ConvModule

    from models.mm_hornet import GnConvModule
    cfg = load_config(f'upernet_horfpn_{mixer}_hornet_small_7x7_512_160k_ade20k.py')
    init_default_scope('mmseg')
    head = MODELS.build(cfg.model.decode_head)  # SyncBN kept, as configured
    uper_cfg = dict(cfg.model.decode_head, type='UPerHead')
    for k in ('gnconv_mixer', 'gnconv_kernel_size', 'gnconv_filter_size'):
        uper_cfg.pop(k, None)
    uper = MODELS.build(uper_cfg)
    assert isinstance(head, UPerHead)
    m = head.fpn_bottleneck
    assert isinstance(m, GnConvModule) and m.stride == 1
    assert type(m.norm).__name__ == 'SyncBatchNorm' and m.norm.num_features == 512
    assert isinstance(m.act, torch.nn.ReLU)
    g = m.gnconv
    assert (g.order, g.scale, g.dims) == (2, 1.0, [256, 512])
    expected = {'proj_in.weight': (1024, 2048, 1, 1), 'proj_in.bias': (1024,),
                'pws.0.weight': (512, 256, 1, 1), 'pws.0.bias': (512,),
                'proj_out.weight': (512, 512, 1, 1), 'proj_out.bias': (512,)}
    if mixer == '7x7':
        expected.update({'dwconv.weight': (768, 1, 7, 7), 'dwconv.bias': (768,)})
    else:
        expected.update({'dwconv.dw.weight': (384, 1, 3, 3), 'dwconv.complex_weight': (384, 32, 17, 2),
                         'dwconv.pre_norm.weight': (768,), 'dwconv.pre_norm.bias': (768,),
                         'dwconv.post_norm.weight': (768,), 'dwconv.post_norm.bias': (768,)})
    assert {k: tuple(v.shape) for k, v in g.named_parameters()} == expected
    assert g.dwconv.padding == (3, 3) if mixer == '7x7' else g.dwconv.dw.padding == (1, 1)
    # unchanged UPerHead parts: 3x3 fpn_convs with SyncBN + ReLU, 1x1 laterals, PPM bottleneck
    assert len(head.fpn_convs) == 3
    for conv in head.fpn_convs:
        assert isinstance(conv, ConvModule) and conv.conv.kernel_size == (3, 3)
        assert (conv.conv.in_channels, conv.conv.out_channels) == (512, 512)
        assert type(conv.norm).__name__ == 'SyncBatchNorm' and isinstance(conv.activate, torch.nn.ReLU)
    assert head.bottleneck.conv.in_channels == 768 + 4 * 512 and head.bottleneck.conv.kernel_size == (3, 3)
    assert {k: v.shape for k, v in head.state_dict().items() if not k.startswith('fpn_bottleneck.')} == \
        {k: v.shape for k, v in uper.state_dict().items() if not k.startswith('fpn_bottleneck.')}
    # the heads run on a pyramid whose stride-4 map resizes the GF filter
    head, uper = revert_sync_batchnorm(head).eval(), revert_sync_batchnorm(uper).eval()
    feats = [torch.randn(1, 96 * 2 ** i, 24 // 2 ** i, 40 // 2 ** i) for i in range(4)]
    with torch.no_grad():
        out = head(feats)
    assert out.shape == (1, 150, 24, 40) and torch.isfinite(out).all()


@pytest.mark.slow
def test_slide_inference_with_gf_filter_interpolation():
    cfg = load_config('upernet_hornet_tiny_gf_512_160k_ade20k.py')
    cfg.model.decode_head.update(in_channels=[16, 32, 64, 128], channels=32)
    cfg.model.auxiliary_head.update(in_channels=64, channels=16)
    cfg.model.test_cfg = dict(mode='slide', crop_size=(64, 64), stride=(43, 43))
    model = build_segmentor(cfg, depths=(1, 1, 1, 1), base_dim=16).eval()

    seen = []
    for m in model.backbone.modules():
        if isinstance(m, GlobalLocalFilter):
            m.register_forward_pre_hook(
                lambda mod, args: seen.append((tuple(mod.complex_weight.shape[1:3]),
                                               (args[0].shape[2], args[0].shape[3] // 2 + 1))))
    torch.manual_seed(0)
    x = torch.randn(1, 3, 80, 112)
    metas = [dict(img_shape=(80, 112), ori_shape=(80, 112), pad_shape=(80, 112))]
    with torch.no_grad():
        slide = model.inference(x, metas)
        seen_slide = list(seen)
        # the same windows by hand: rows 0 and 16, columns 0, 43, 48 (clamped to the border)
        windows = [(y, xx) for y in (0, 16) for xx in (0, 43, 48)]
        acc = torch.zeros(1, 150, 80, 112)
        cnt = torch.zeros(1, 1, 80, 112)
        for y, xx in windows:
            crop = x[:, :, y:y + 64, xx:xx + 64]
            acc[:, :, y:y + 64, xx:xx + 64] += model.encode_decode(crop, [dict(img_shape=(64, 64))])
            cnt[:, :, y:y + 64, xx:xx + 64] += 1
    assert slide.shape == (1, 150, 80, 112) and torch.isfinite(slide).all()
    assert torch.allclose(slide, acc / cnt, atol=1e-5)
    # 6 windows x 2 GF stages; the 64 px crop gives 4x4 / 2x2 maps: filters resized to (4, 3) / (2, 2)
    assert len(seen_slide) == 12
    assert set(seen_slide) == {((24, 13), (4, 3)), ((12, 7), (2, 2))}


@pytest.mark.slow
def test_script_options_map_onto_the_config():
    from semantic_segmentation import test as seg_test
    from semantic_segmentation import train as seg_train
    name = os.path.join(CONFIG_DIR, 'upernet_hornet_tiny_gf_512_160k_ade20k.py')
    # the mmseg 0.x style command of the original README still works
    args = seg_train.parse_args([name, '--work-dir', 'w', '--seed', '0', '--deterministic', '--amp',
                                 '--options', 'model.pretrained=cls.pth', 'train_dataloader.batch_size=4'])
    cfg = seg_train.build_config(args)
    assert cfg.model.pretrained is None
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint='cls.pth')
    assert (cfg.work_dir, cfg.train_dataloader.batch_size, cfg.randomness) == \
        ('w', 4, dict(seed=0, deterministic=True))
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.resume is False
    cfg = seg_train.build_config(seg_train.parse_args([name, '--resume-from', 'r.pth', '--no-validate']))
    assert (cfg.resume, cfg.load_from, cfg.val_cfg, cfg.val_dataloader) == (True, 'r.pth', None, None)
    assert seg_train.build_config(seg_train.parse_args([name, '--resume'])).resume is True

    cfg = seg_test.build_config(seg_test.parse_args([name, 'ckpt.pth', '--aug-test', '--eval', 'mIoU', 'mDice']))
    assert cfg.load_from == 'ckpt.pth' and 'init_cfg' not in cfg.model.module.backbone
    assert (cfg.model.type, cfg.model.module.type) == ('SegTTAModel', 'EncoderDecoder')
    assert cfg.test_dataloader.dataset.pipeline == cfg.tta_pipeline
    assert cfg.test_evaluator.iou_metrics == ['mIoU', 'mDice']
    # 6 scales of the 2048x512 single-scale test size, each plain and flipped
    resizes = cfg.tta_pipeline[1].transforms[0]
    assert [r.scale for r in resizes] == [(1024, 256), (1536, 384), (2048, 512), (2560, 640), (3072, 768),
                                          (3584, 896)]


def test_backbone_initialised_from_classification_checkpoint(tmp_path):
    import timm
    classifier = timm.create_model('hornet_tiny_gf', depths=(1, 1, 1, 1), base_dim=16, num_classes=1000)
    path = str(tmp_path / 'hornet_tiny_gf.pth')
    torch.save({'model': classifier.state_dict()}, path)  # released format, 14x8 / 7x4 filters
    cfg = load_config('upernet_hornet_tiny_gf_512_160k_ade20k.py')
    cfg.model.backbone.update(depths=(1, 1, 1, 1), base_dim=16, init_cfg=dict(type='Pretrained', checkpoint=path))
    cfg.model.decode_head.update(in_channels=[16, 32, 64, 128], channels=32)
    cfg.model.auxiliary_head.update(in_channels=64, channels=16)
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    model.init_weights()
    bb, ref = model.backbone.state_dict(), classifier.state_dict()
    assert torch.equal(bb['stages.1.0.pwconv1.weight'], ref['stages.1.0.pwconv1.weight'])
    assert torch.equal(bb['downsample_layers.0.0.weight'], ref['downsample_layers.0.0.weight'])
    w = bb['stages.2.0.gnconv.dwconv.complex_weight']
    assert w.shape == (60, 24, 13, 2)  # order 4 at width 64: 8+16+32+64 mixed channels, half global; 14x8 -> 24x13
    # bilinear, align_corners: the corners of the filter are kept exactly
    src = ref['stages.2.0.gnconv.dwconv.complex_weight']
    assert torch.allclose(w[:, [0, -1]][:, :, [0, -1]], src[:, [0, -1]][:, :, [0, -1]])
