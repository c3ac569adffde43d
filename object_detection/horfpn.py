"""HorFPN: a feature pyramid network whose output convs are gnConv layers (HorNet paper, Sec. 4).

Registered in mmdet's ``MODELS`` as ``type='HorFPN'``. It is mmdet's :class:`~mmdet.models.necks.FPN`
(lateral 1x1 convs, top-down nearest upsampling) with every 3x3 output conv — and every extra-level
conv — replaced by :class:`models.GnConv` of order 2 on the FPN width (scale 1, with ``proj_out``),
whose spatial mixer is a depthwise 7x7 conv (``mixer='dwconv'``, "HorFPN-7x7") or a
:class:`models.GlobalLocalFilter` (``mixer='gf'``, "HorFPN-GF", filter 32x17 by default, resized to
each level at run time), followed by the FPN's optional norm and activation.
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmdet.models.necks import FPN
from mmdet.registry import MODELS

from models import GnConv

__all__ = ['HorFPN', 'GnConvFPNLayer']


class GnConvFPNLayer(nn.Module):
    """gnConv (order 2, s = 1) in place of an FPN 3x3 conv, then optional norm / activation.

    Args:
        in_channels: Input width (the extra level on the backbone input may differ from the output).
        out_channels: FPN width; the gnConv recursion runs at this width.
        order: gnConv order.
        mixer: ``'dwconv'`` or ``'gf'``.
        kernel_size: Depthwise-conv kernel for ``'dwconv'``.
        filter_size: ``(h, w)`` of the GF filter for ``'gf'``.
        stride: 2 for extra pyramid levels: the gnConv output is subsampled like FPN's
            ``max_pool2d(1, stride=2)``.
        norm_cfg: Optional mmcv norm config (e.g. ``dict(type='GN', num_groups=32)``).
        act_cfg: Optional mmcv activation config.
    """

    def __init__(self, in_channels: int, out_channels: int, order: int = 2, mixer: str = 'dwconv',
                 kernel_size: int = 7, filter_size: Sequence[int] = (32, 17), stride: int = 1,
                 norm_cfg: Optional[dict] = None, act_cfg: Optional[dict] = None):
        super().__init__()
        self.gnconv = GnConv(out_channels, order=order, scale=1.0, mixer=mixer, kernel_size=kernel_size,
                             filter_size=tuple(filter_size), in_dim=in_channels, out_dim=out_channels,
                             proj_out=True)
        self.stride = stride
        self.norm = build_norm_layer(norm_cfg, out_channels)[1] if norm_cfg else None
        self.act = build_activation_layer(act_cfg) if act_cfg else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gnconv(x)
        if self.stride > 1:
            x = F.max_pool2d(x, 1, stride=self.stride)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


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
        if mixer not in ('dwconv', 'gf'):
            raise ValueError(f"HorFPN mixer must be 'dwconv' or 'gf', got {mixer!r}")
        norm_cfg, act_cfg = kwargs.get('norm_cfg'), kwargs.get('act_cfg')
        layer = dict(order=order, mixer=mixer, kernel_size=kernel_size, filter_size=filter_size,
                     norm_cfg=norm_cfg, act_cfg=act_cfg)
        num_levels = self.backbone_end_level - self.start_level
        fpn_convs = nn.ModuleList(GnConvFPNLayer(out_channels, out_channels, **layer)
                                  for _ in range(num_levels))
        # extra levels: same sources and widths as FPN's stride-2 3x3 convs
        for i, conv in enumerate(list(self.fpn_convs)[num_levels:]):
            in_ch = conv.conv.in_channels
            fpn_convs.append(GnConvFPNLayer(in_ch, out_channels, stride=2, **layer))
        self.fpn_convs = fpn_convs
