"""Parameters and FLOPs of a detection config, counted as in the published table.

    python object_detection/get_flops.py CONFIG [--shape 800 1280]

Convention (that of the published COCO table, "FLOPs at 1280x800"): the detector's dummy forward —
backbone, neck and RPN head on one ``3 x H x W`` image, then every RoI-head stage's box head on
1000 RoIs and mask head on the first 100 — counted by ``calc_flops.count_flops`` in the convention
of the classification model zoo (one multiply-add is one FLOP; see ``calc_flops.py`` for the FFT and
LayerNorm terms); RoIAlign and NMS are not counted. Everything runs on
the ``meta`` device, so nothing is allocated and HorNet-L takes seconds.
"""
import argparse
from collections.abc import Sequence

import torch
import torch.nn as nn
from mmengine.config import Config, DictAction
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope

if not __package__:  # run as a file, not imported from the repository root: see _repo_root.py
    import _repo_root  # noqa: F401

from calc_flops import count_flops as count_model_flops

NUM_ROIS, NUM_MASK_ROIS = 1000, 100


def build_detector(cfg: Config) -> nn.Module:
    """Build the config's detector without loading pre-trained weights (SyncBN -> BN)."""
    from mmdet.registry import MODELS
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.backbone.pop('pretrained', None)
    return revert_sync_batchnorm(MODELS.build(cfg.model))


def _dummy_forward(model: nn.Module, x: torch.Tensor) -> None:
    feats = model.extract_feat(x)
    if getattr(model, 'rpn_head', None) is not None:
        model.rpn_head(feats)
    roi_head = getattr(model, 'roi_head', None)
    if roi_head is None:
        return
    out_ch = feats[0].shape[1]
    bbox_heads = roi_head.bbox_head if isinstance(roi_head.bbox_head, nn.ModuleList) else [roi_head.bbox_head]
    for head in bbox_heads:
        size = head.roi_feat_size
        head(torch.zeros(NUM_ROIS, out_ch, *size, device=x.device))
    if getattr(roi_head, 'with_mask', False):
        mask_heads = roi_head.mask_head if isinstance(roi_head.mask_head, nn.ModuleList) else [roi_head.mask_head]
        roi_size = roi_head.mask_roi_extractor[0].roi_layers[0].output_size \
            if isinstance(roi_head.mask_roi_extractor, nn.ModuleList) \
            else roi_head.mask_roi_extractor.roi_layers[0].output_size
        roi_size = (roi_size, roi_size) if isinstance(roi_size, int) else tuple(roi_size)
        for head in mask_heads:
            head(torch.zeros(NUM_MASK_ROIS, out_ch, *roi_size, device=x.device))


def count_flops(model: nn.Module, shape: Sequence[int] = (800, 1280)) -> dict[str, float]:
    """FLOPs of the dummy forward of one ``3 x H x W`` image, parameter count and backbone share."""
    params = sum(p.numel() for p in model.parameters())
    params_backbone = sum(p.numel() for p in model.backbone.parameters())
    model = model.to('meta')
    counts = count_model_flops(model, shape, forward=_dummy_forward)
    return dict(flops=counts['total'], fft_flops=counts['fft'], params=params, params_backbone=params_backbone)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description='Parameters and FLOPs of a detection config')
    parser.add_argument('config', help='config file')
    parser.add_argument('--shape', type=int, nargs='+', default=[800, 1280],
                        help='input H W (one value: square); default 800 1280 as in the paper')
    parser.add_argument('--cfg-options', '--options', nargs='+', action=DictAction,
                        help='override config entries')
    args = parser.parse_args(argv)
    if len(args.shape) not in (1, 2):
        parser.error('--shape takes H W or a single size')
    shape = tuple(args.shape) * (3 - len(args.shape))
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    result = count_flops(build_detector(cfg), shape)
    print(f'Config: {args.config}')
    print(f'Input shape: 3x{shape[0]}x{shape[1]}')
    print(f"Params: {result['params'] / 1e6:.2f} M (backbone {result['params_backbone'] / 1e6:.2f} M)")
    print(f"FLOPs: {result['flops'] / 1e9:.1f} G (FFT {result['fft_flops'] / 1e9:.2f} G)")
    return result


if __name__ == '__main__':
    main()
