"""Parameters and FLOPs of a segmentation config (backbone + decode head, as published).

    python semantic_segmentation/get_flops.py CONFIG [--shape H W]

The default input is ``crop x 4 crop`` (512x2048, 640x2560 for HorNet-L), as in the published table.

Counting: ``calc_flops.count_flops``, the convention of the classification model zoo (one
multiply-add is one FLOP; see ``calc_flops.py`` for the FFT and LayerNorm terms); the auxiliary
head (training only) is left out of the FLOPs but kept in the parameter count. The model runs on the ``meta``
device, so nothing is allocated and even HorNet-L takes seconds.
"""
import argparse
from collections.abc import Sequence

import torch
from mmengine.config import Config, DictAction
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope

if not __package__:  # run as a file, not imported from the repository root: see _repo_root.py
    import _repo_root  # noqa: F401

from calc_flops import count_flops as count_model_flops


def build_segmentor(cfg: Config) -> torch.nn.Module:
    """Build the config's segmentor without pre-trained weights and without the auxiliary head."""
    from mmseg.registry import MODELS
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    cfg.model.pretrained = None
    cfg.model.backbone.pop('init_cfg', None)
    return revert_sync_batchnorm(MODELS.build(cfg.model))


def count_flops(model: torch.nn.Module, shape: Sequence[int] = (512, 2048)) -> dict[str, float]:
    """FLOPs of one ``3 x H x W`` image through backbone and decode head, and parameter counts.

    Returns a dict with ``flops`` and ``fft_flops`` (counts), ``params`` (whole model) and
    ``params_aux`` (the auxiliary head's share).
    """
    params = sum(p.numel() for p in model.parameters())
    aux = getattr(model, 'auxiliary_head', None)
    params_aux = sum(p.numel() for p in aux.parameters()) if aux is not None else 0
    model = model.to('meta')
    # backbone + decode head, no auxiliary head
    counts = count_model_flops(model, shape, forward=lambda m, x: m(x, mode='tensor'))
    return dict(flops=counts['total'], fft_flops=counts['fft'], params=params, params_aux=params_aux)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description='Parameters and FLOPs of a segmentation config')
    parser.add_argument('config', help='config file')
    parser.add_argument('--shape', type=int, nargs='+', default=None,
                        help='input H W (one value: square); default crop x 4*crop (512 2048)')
    parser.add_argument('--cfg-options', '--options', nargs='+', action=DictAction,
                        help='override config entries')
    args = parser.parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.shape is None:
        crop = cfg.get('crop_size', (512, 512))[0]
        shape = (crop, 4 * crop)
    elif len(args.shape) in (1, 2):
        shape = tuple(args.shape) * (3 - len(args.shape))
    else:
        parser.error('--shape takes H W or a single size')
    result = count_flops(build_segmentor(cfg), shape)
    print(f'config: {args.config}\ninput: 3x{shape[0]}x{shape[1]}\n'
          f'FLOPs: {result["flops"] / 1e9:.1f} G (FFT {result["fft_flops"] / 1e9:.2f} G)\n'
          f'params: {result["params"] / 1e6:.2f} M (auxiliary head {result["params_aux"] / 1e6:.2f} M)')
    return result


if __name__ == '__main__':
    main()
