"""HorFPN decode head: UperNet whose FPN output convs are order-2 gnConv layers.

The paper's HorFPN swaps the 3x3 output conv of every FPN level for a gnConv of order 2 (gate
scale 1, with the output projection) whose spatial mixer is a depthwise 7x7 conv or the
GlobalLocalFilter. In UperNet that is the ``fpn_convs`` of :class:`mmseg.models.UPerHead`;
everything else (PPM, laterals, fusion bottleneck) is unchanged.
"""
from typing import Sequence

import torch.nn as nn
from mmseg.models.decode_heads import UPerHead
from mmseg.registry import MODELS

from models.mm_hornet import GnConvModule

__all__ = ['HorFPNHead']


@MODELS.register_module()
class HorFPNHead(UPerHead):
    """UperNet head with HorFPN output layers (gnConv instead of 3x3 convs).

    Args:
        gnconv_mixer: ``'dwconv'`` for HorFPN-7x7, ``'gf'`` for HorFPN-GF.
        gnconv_kernel_size: Depthwise kernel of the ``'dwconv'`` mixer.
        gnconv_filter_size: Initial GF filter ``(h, w)``.
        **kwargs: Arguments of :class:`mmseg.models.UPerHead` (``in_channels``, ``channels``,
            ``pool_scales``, ``norm_cfg``, ...).
    """

    def __init__(
            self,
            gnconv_mixer: str = 'dwconv',
            gnconv_kernel_size: int = 7,
            gnconv_filter_size: Sequence[int] = (32, 17),
            **kwargs,
    ):
        super().__init__(**kwargs)
        if gnconv_mixer not in ('dwconv', 'gf'):
            raise ValueError(f"gnconv_mixer must be 'dwconv' or 'gf', got {gnconv_mixer!r}")
        self.fpn_convs = nn.ModuleList(
            GnConvModule(
                self.channels, self.channels, order=2, mixer=gnconv_mixer, kernel_size=gnconv_kernel_size,
                filter_size=gnconv_filter_size, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
            for _ in self.in_channels[:-1])
