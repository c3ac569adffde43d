"""HorFPN decode head: UperNet whose FPN fusion layer is an order-2 gnConv (the original ``GNUPerHead``).

In UperNet the four FPN levels are upsampled to stride 4, concatenated (``4 * channels``) and fused
by ``fpn_bottleneck``, a 3x3 ``ConvModule``. HorFPN makes that fusion layer a gnConv of order 2
(gate scale 1, with the output projection; ``4 * channels`` in, ``channels`` out) whose spatial
mixer is a depthwise 7x7 conv or the GlobalLocalFilter, followed by the head's norm (SyncBN) and
activation (ReLU). Everything else of :class:`mmseg.models.UPerHead` is unchanged: the PPM and its
bottleneck, the 1x1 lateral convs and the three 3x3 ``fpn_convs``.
"""
from collections.abc import Sequence

from mmseg.models.decode_heads import UPerHead
from mmseg.registry import MODELS

from models.mm_hornet import GnConvModule

__all__ = ['HorFPNHead']


@MODELS.register_module()
class HorFPNHead(UPerHead):
    """UperNet head with a gnConv ``fpn_bottleneck`` (HorFPN).

    Args:
        gnconv_mixer: ``'dwconv'`` for HorFPN-7x7, ``'gf'`` for HorFPN-GF.
        gnconv_kernel_size: Depthwise kernel of the ``'dwconv'`` mixer.
        gnconv_filter_size: GF filter ``(h, w)``; resized to the stride-4 map at run time.
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
        self.fpn_bottleneck = GnConvModule(
            len(self.in_channels) * self.channels, self.channels, order=2, mixer=gnconv_mixer,
            kernel_size=gnconv_kernel_size, filter_size=gnconv_filter_size, norm_cfg=self.norm_cfg,
            act_cfg=self.act_cfg)
