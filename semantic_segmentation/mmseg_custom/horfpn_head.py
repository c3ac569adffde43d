"""HorFPN decode head: UperNet whose FPN output convs are order-2 gnConv layers.

The paper's HorFPN swaps the 3x3 output conv of every FPN level for a gnConv of order 2 (gate
scale 1, with the output projection) whose spatial mixer is a depthwise 7x7 conv or the
GlobalLocalFilter. In UperNet that is the ``fpn_convs`` of :class:`mmseg.models.UPerHead`;
everything else (PPM, laterals, fusion bottleneck) is unchanged.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmseg.models.decode_heads import UPerHead
from mmseg.registry import MODELS

from models import GnConv

__all__ = ['GnConvModule', 'HorFPNHead']


class GnConvModule(nn.Module):
    """Order-2 gnConv followed by the optional norm and activation of an mmcv ``ConvModule``.

    Args:
        channels: Input and output width.
        mixer: ``'dwconv'`` (depthwise ``kernel_size`` conv) or ``'gf'`` (GlobalLocalFilter).
        kernel_size: Kernel of the ``'dwconv'`` mixer.
        filter_size: ``(h, w)`` of the ``'gf'`` filter; resized to each feature map at run time.
        norm_cfg: mmcv norm config, or None for no norm.
        act_cfg: mmcv activation config, or None for no activation.
    """

    def __init__(
            self,
            channels: int,
            mixer: str = 'dwconv',
            kernel_size: int = 7,
            filter_size: Sequence[int] = (32, 17),
            norm_cfg: Optional[Dict] = None,
            act_cfg: Optional[Dict] = dict(type='ReLU'),
    ):
        super().__init__()
        self.gnconv = GnConv(
            channels, order=2, scale=1.0, mixer=mixer, kernel_size=kernel_size,
            filter_size=tuple(filter_size), proj_out=True)
        self.norm = build_norm_layer(norm_cfg, channels)[1] if norm_cfg is not None else nn.Identity()
        self.activate = build_activation_layer(dict(act_cfg)) if act_cfg is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.norm(self.gnconv(x)))


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
                self.channels, mixer=gnconv_mixer, kernel_size=gnconv_kernel_size,
                filter_size=gnconv_filter_size, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
            for _ in self.in_channels[:-1])
