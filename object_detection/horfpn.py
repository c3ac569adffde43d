"""HorFPN: a feature pyramid network whose output convs are gnConv layers (HorNet paper, Sec. 4).

Registered in mmdet's ``MODELS`` as ``type='HorFPN'``. It is mmdet's :class:`~mmdet.models.necks.FPN`
(lateral 1x1 convs, top-down nearest upsampling) with every 3x3 output conv — and every extra-level
conv — replaced by :class:`models.GnConv` of order 2 on the FPN width (scale 1, with ``proj_out``),
whose spatial mixer is a depthwise 7x7 conv (``mixer='dwconv'``, "HorFPN-7x7") or a
:class:`models.GlobalLocalFilter` (``mixer='gf'``, "HorFPN-GF", filter 32x17 by default, resized to
each level at run time), followed by the FPN's optional norm and activation.
"""
from collections.abc import Sequence

import torch.nn as nn
from mmdet.models.necks import FPN
from mmdet.registry import MODELS

from models.mm_hornet import GnConvModule

__all__ = ['HorFPN']


@MODELS.register_module()
class HorFPN(FPN):
    """FPN with gnConv output layers.

    Args:
        in_channels, out_channels, num_outs, start_level, end_level, add_extra_convs,
        relu_before_extra_convs, no_norm_on_lateral, conv_cfg, norm_cfg, act_cfg, upsample_cfg,
        init_cfg: As in mmdet's ``FPN`` (``conv_cfg`` applies to the lateral convs only).
        mixer: gnConv spatial mixer, ``'dwconv'`` (HorFPN-7x7) or ``'gf'`` (HorFPN-GF).
        order: gnConv order (2 in the paper).
        kernel_size: Depthwise kernel of the ``'dwconv'`` mixer.
        filter_size: GF filter ``(h, w)`` of the ``'gf'`` mixer.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int,
                 mixer: str = 'dwconv', order: int = 2, kernel_size: int = 7,
                 filter_size: Sequence[int] = (32, 17), **kwargs):
        super().__init__(in_channels, out_channels, num_outs, **kwargs)
        norm_cfg, act_cfg = kwargs.get('norm_cfg'), kwargs.get('act_cfg')
        layer = dict(order=order, mixer=mixer, kernel_size=kernel_size, filter_size=filter_size,
                     norm_cfg=norm_cfg, act_cfg=act_cfg)
        num_levels = self.backbone_end_level - self.start_level
        fpn_convs = nn.ModuleList(GnConvModule(out_channels, out_channels, **layer)
                                  for _ in range(num_levels))
        # extra levels: same sources and widths as FPN's stride-2 3x3 convs
        for conv in list(self.fpn_convs)[num_levels:]:
            in_ch = conv.conv.in_channels
            fpn_convs.append(GnConvModule(in_ch, out_channels, stride=2, **layer))
        self.fpn_convs = fpn_convs
