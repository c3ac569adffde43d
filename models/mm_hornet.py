"""HorNet for OpenMMLab 2.0 (mmengine): dense-prediction backbone and layer-decay optimizer.

This is the only module of ``models`` that imports mmengine; ``import models`` stays free of
OpenMMLab. Importing it registers, in mmengine's *root* registries (so every child registry —
mmdet's, mmseg's — resolves them too):

* ``MODELS``: ``type='HorNet'`` -> :class:`HorNetBackbone`, the four-stage HorNet trunk of
  :class:`models.hornet.HorNet` with a channels-first LayerNorm ``norm{i}`` on each output.
* ``OPTIM_WRAPPER_CONSTRUCTORS``: ``'HorNetLayerDecayOptimizerConstructor'`` ->
  :class:`HorNetLayerDecayOptimizerConstructor`, layer-wise / stage-wise lr decay.

It also holds :class:`GnConvModule`, the gnConv layer that HorFPN uses in place of a
``ConvModule``: the four output convs of the detection neck (``object_detection/horfpn.py``) and
the fusion layer ``fpn_bottleneck`` of the UperNet head
(``semantic_segmentation/mmseg_custom/horfpn_head.py``).

Usage in an mmdet / mmseg config::

    custom_imports = dict(imports=['models.mm_hornet'], allow_failed_imports=False)
    model = dict(backbone=dict(
        type='HorNet', arch='small_gf', gf_sizes=(None, None, (24, 13), (12, 7)),
        drop_path_rate=0.3, out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/hornet_small_gf.pth')))
    optim_wrapper = dict(
        type='OptimWrapper', constructor='HorNetLayerDecayOptimizerConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12))

The repository root must be importable (``sys.path``) for ``custom_imports`` to find ``models``;
with the package installed (``pip install .``) import ``hornet.mm_hornet`` instead, from anywhere.
Everything this module needs lives in ``models/``: checkpoints are read by ``models.state_dict``.
"""
import logging
import os
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmengine.fileio import get_local_path
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from timm.layers import LayerNorm2d

from .hornet import HORNET_ARCHS, GnConv, HorNet, checkpoint_filter_fn, run_stage
from .layer_decay import dense_layer_id, param_groups_layer_decay
from .state_dict import check_state_dict, from_mmpretrain, read_weights, resize_gf_filters, unwrap_checkpoint

__all__ = ['HorNetBackbone', 'HorNetLayerDecayOptimizerConstructor', 'load_hornet_backbone_checkpoint']

_logger = logging.getLogger(__name__)

GfSizes = Sequence[Sequence[int] | None]


class _ClassifierView(nn.Module):
    """The trunk of a backbone seen with the classifier's key layout (``norm`` but no ``head``),
    so :func:`models.checkpoint_filter_fn` can check and adapt classification checkpoints."""

    def __init__(self, backbone: 'HorNetBackbone'):
        super().__init__()
        self.downsample_layers = backbone.downsample_layers
        self.stages = backbone.stages
        self.norm = nn.LayerNorm(backbone.out_channels[-1], eps=1e-6)  # the classifier's final norm


def _is_dense_checkpoint(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for a detection/segmentation checkpoint (``backbone.norm0``.. keys, no classifier)."""
    if any(k.startswith(('backbone.norm0.', 'backbone.norm1.', 'backbone.norm2.')) for k in state_dict):
        return True
    return any(k.startswith('backbone.') for k in state_dict) and \
        not any(k.startswith(('head.', 'backbone.norm3.')) for k in state_dict)


def load_hornet_backbone_checkpoint(backbone: 'HorNetBackbone', checkpoint: dict) -> dict[str, list[str]]:
    """Load a HorNet checkpoint into a :class:`HorNetBackbone`.

    Accepts a released classification checkpoint (``model``/``module`` entry), an mmpretrain
    classification checkpoint, a bare state dict, or a released detection/segmentation checkpoint
    (``state_dict`` with ``backbone.*`` keys including ``norm0..norm3``).

    Classification checkpoints: ``head``/``norm`` are dropped, GF filters resized to the
    backbone's sizes, ``norm{i}`` keep their fresh init; every other key must fit.
    Dense checkpoints: the ``backbone.`` keys are loaded strictly (GF filters resized if needed;
    ``norm{i}`` of stages not in ``out_indices`` are ignored).

    Returns:
        ``dict(loaded=[...], missing=[...], resized=[...])`` key lists.

    Raises:
        models.CheckpointMismatchError: listing keys that do not fit.
    """
    target = backbone.state_dict()
    raw = unwrap_checkpoint(checkpoint)
    if _is_dense_checkpoint(raw):
        state = {k[len('backbone.'):]: v for k, v in raw.items() if k.startswith('backbone.')}
        extra_norms = {f'norm{i}' for i in range(4)} - {f'norm{i}' for i in backbone.out_indices}
        state = {k: v for k, v in state.items() if k.split('.')[0] not in extra_norms}
        resized = resize_gf_filters(state, target)
        check_state_dict(state, backbone, what='detection/segmentation checkpoint (backbone.* keys)')
        backbone.load_state_dict(state, strict=True)
        return dict(loaded=sorted(state), missing=[], resized=resized)

    view = _ClassifierView(backbone)
    if any(k.startswith('backbone.') for k in raw):  # an mmpretrain classifier
        raw = from_mmpretrain(raw)
    resized = resize_gf_filters(raw, view.state_dict())
    state = checkpoint_filter_fn(raw, view)  # strict check (the GF filters already fit)
    state = {k: v for k, v in state.items() if not k.startswith('norm.')}
    result = backbone.load_state_dict(state, strict=False)
    if result.unexpected_keys or any(not k.startswith('norm') for k in result.missing_keys):
        raise RuntimeError(f'unexpected load result {result}')  # guarded by checkpoint_filter_fn
    return dict(loaded=sorted(state), missing=list(result.missing_keys), resized=resized)


@MODELS.register_module(name='HorNet')
class HorNetBackbone(BaseModule):
    """HorNet feature pyramid for detection and segmentation (mmengine ``type='HorNet'``).

    The trunk (``downsample_layers``, ``stages``) is that of :class:`models.hornet.HorNet`; each
    output stage ``i`` in ``out_indices`` gets a channels-first LayerNorm ``norm{i}``. Outputs are
    strides 4, 8, 16, 32 with ``base_dim * 2**i`` channels.

    Args:
        arch: Variant name from :data:`models.HORNET_ARCHS` (``'tiny_7x7'``, ``'small_gf'``, ...);
            supplies defaults for ``depths``, ``base_dim`` and ``gf_sizes``.
        depths: Blocks per stage (overrides ``arch``).
        base_dim: Stage-0 width (overrides ``arch``).
        orders: gnConv order per stage.
        gf_sizes: GF filter ``(h, w)`` per stage, None for the 7x7 depthwise conv (overrides
            ``arch``; e.g. ``(None, None, (24, 13), (12, 7))`` for large inputs).
        scale: gnConv gate scale ``s``.
        drop_path_rate: Stochastic depth, rising linearly over all blocks.
        layer_scale_init_value: Initial layer scale.
        out_indices: Stages whose (normalised) outputs are returned.
        frozen_stages: Freeze stages ``< frozen_stages`` with their downsample layers (-1: none).
        with_cp: Gradient checkpointing of every block (saves memory, costs compute).
        pretrained: Path of a HorNet checkpoint to initialise from (same as
            ``init_cfg=dict(type='Pretrained', checkpoint=path)``).
        init_cfg: mmengine init config; a ``Pretrained`` entry is handled by
            :func:`load_hornet_backbone_checkpoint`.
    """

    def __init__(
            self,
            arch: str | None = None,
            depths: Sequence[int] | None = None,
            base_dim: int | None = None,
            orders: Sequence[int] = (2, 3, 4, 5),
            gf_sizes: GfSizes | None = None,
            scale: float = 1 / 3,
            drop_path_rate: float = 0.,
            layer_scale_init_value: float = 1e-6,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            frozen_stages: int = -1,
            with_cp: bool = False,
            pretrained: str | None = None,
            init_cfg: dict | list[dict] | None = None,
    ):
        if arch is not None and arch not in HORNET_ARCHS:
            raise ValueError(f'unknown HorNet arch {arch!r}; valid: {sorted(HORNET_ARCHS)}')
        spec = dict(HORNET_ARCHS[arch]) if arch else {}
        depths = depths if depths is not None else spec.get('depths')
        base_dim = base_dim if base_dim is not None else spec.get('base_dim')
        gf_sizes = gf_sizes if gf_sizes is not None else spec.get('gf_sizes', (None,) * 4)
        if depths is None or base_dim is None:
            raise ValueError("HorNet backbone needs arch='tiny_gf'-style name or depths and base_dim")
        gf_sizes = tuple(None if s is None else tuple(s) for s in gf_sizes)
        if not set(out_indices) <= {0, 1, 2, 3}:
            raise ValueError(f'out_indices must be stage indices 0..3, got {out_indices}')

        # a Pretrained init_cfg is loaded by our own loader (drops head, resizes GF filters)
        if init_cfg is not None:
            cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg]
            for c in cfgs:
                if c.get('type') == 'Pretrained':
                    pretrained = pretrained or c['checkpoint']
            init_cfg = [c for c in cfgs if c.get('type') != 'Pretrained'] or None
        super().__init__(init_cfg=init_cfg)
        self.pretrained = pretrained

        trunk = HorNet(
            num_classes=0, depths=depths, base_dim=base_dim, orders=orders, scale=scale,
            gf_sizes=gf_sizes, drop_path_rate=drop_path_rate,
            layer_scale_init_value=layer_scale_init_value)
        self.downsample_layers = trunk.downsample_layers
        self.stages = trunk.stages
        self.depths = tuple(depths)
        self.out_indices = tuple(out_indices)
        self.out_channels = [base_dim * 2 ** i for i in range(4)]
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp
        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(self.out_channels[i], eps=1e-6))
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        for i in range(max(self.frozen_stages, 0)):
            for m in (self.downsample_layers[i], self.stages[i]):
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False

    def train(self, mode: bool = True) -> 'HorNetBackbone':
        super().train(mode)
        self._freeze_stages()  # frozen stages stay in eval mode (no drop path)
        return self

    def init_weights(self) -> None:
        """Initialise from ``pretrained`` if given (otherwise keep HorNet's own init)."""
        super().init_weights()
        if self.pretrained is None:
            return
        if '://' not in self.pretrained and not os.path.isfile(os.path.expanduser(self.pretrained)):
            raise FileNotFoundError(
                f'HorNet backbone checkpoint {self.pretrained!r} not found: download the ImageNet '
                f'checkpoint there, or set model.backbone.init_cfg.checkpoint=PATH (or init_cfg=None '
                f'to train from scratch)')
        if '://' in self.pretrained and not self.pretrained.startswith(('http://', 'https://')):
            with get_local_path(self.pretrained) as path:  # another mmengine file backend
                state = read_weights(path)  # weights only, never unpickled
        else:
            state = read_weights(self.pretrained)
        info = load_hornet_backbone_checkpoint(self, state)
        # mmengine's logger, so the line lands in the runner's log file
        print_log(f"HorNet backbone: loaded {len(info['loaded'])} tensors from {self.pretrained} "
                  f"(fresh: {', '.join(info['missing']) or 'none'}; "
                  f"GF filters resized: {', '.join(info['resized']) or 'none'})", logger='current')

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i in range(len(self.stages)):
            x = run_stage(self.downsample_layers[i], self.stages[i], x, self.with_cp)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
            if i >= max(self.out_indices):
                break
        return tuple(outs)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class HorNetLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise learning-rate decay for a model with a HorNet ``backbone``, as the original.

    ``paramwise_cfg``:
        ``decay_rate`` r (float), ``decay_type`` (``'layer_wise'`` or ``'stage_wise'``),
        ``num_layers`` n (int).

    The groups of :func:`models.layer_decay.param_groups_layer_decay` with the ids of
    :func:`models.dense_layer_id` (the rule is explained in ``models/layer_decay.py``), each with
    its ``lr = base_lr * lr_scale``.
    """

    def add_params(self, params: list[dict], module: nn.Module, **kwargs) -> None:
        cfg = self.paramwise_cfg
        decay_rate = float(cfg.get('decay_rate', 1.0))
        decay_type = cfg.get('decay_type', 'layer_wise')
        if decay_type not in ('layer_wise', 'stage_wise'):
            raise ValueError(f"decay_type must be 'layer_wise' or 'stage_wise', got {decay_type!r}")
        num_layers = int(cfg.get('num_layers', 12))
        groups = param_groups_layer_decay(
            module, weight_decay=0. if self.base_wd is None else self.base_wd, layer_decay=decay_rate,
            get_layer_id=lambda name: dense_layer_id(name, num_layers=num_layers, decay_type=decay_type),
            num_layers=num_layers)
        for group in groups:
            del group['names'], group['use_wd']  # mmengine's groups: params, lr and weight decay
            group['lr'] = self.base_lr * group['lr_scale']
            _logger.debug('lr group %s: scale %.4g, %d params', group['group_name'], group['lr_scale'],
                          len(group['params']))
            params.append(group)


class GnConvModule(nn.Module):
    """gnConv in place of a ``ConvModule``'s conv, then its optional norm and activation.

    This is HorFPN's layer (the original ``GNConvModule``): order 2, gate scale 1, a 1x1
    ``proj_in`` from ``in_channels`` to ``2 * out_channels`` and a 1x1 ``proj_out``, all convs
    with bias. No norm/activation in the detection neck; SyncBN + ReLU in the UperNet head.

    Args:
        in_channels: Input width (an extra pyramid level on the backbone output may differ).
        out_channels: Output width; the gnConv recursion runs at this width.
        order: gnConv order.
        mixer: ``'dwconv'`` (depthwise ``kernel_size`` conv) or ``'gf'`` (GlobalLocalFilter).
        kernel_size: Kernel of the ``'dwconv'`` mixer.
        filter_size: ``(h, w)`` of the ``'gf'`` filter; resized to each feature map at run time.
        stride: 2 for extra pyramid levels: the output is subsampled like FPN's
            ``max_pool2d(1, stride=2)``.
        norm_cfg: mmcv norm config, or None for no norm.
        act_cfg: mmcv activation config, or None for no activation.
    """

    def __init__(self, in_channels: int, out_channels: int, order: int = 2, mixer: str = 'dwconv',
                 kernel_size: int = 7, filter_size: Sequence[int] = (32, 17), stride: int = 1,
                 norm_cfg: dict | None = None, act_cfg: dict | None = None):
        super().__init__()
        if mixer not in ('dwconv', 'gf'):
            raise ValueError(f"gnConv mixer must be 'dwconv' or 'gf', got {mixer!r}")
        self.gnconv = GnConv(out_channels, order=order, scale=1.0, mixer=mixer, kernel_size=kernel_size,
                             filter_size=tuple(filter_size), in_dim=in_channels, out_dim=out_channels,
                             proj_out=True)
        self.stride = stride
        self.norm = build_norm_layer(norm_cfg, out_channels)[1] if norm_cfg else nn.Identity()
        self.act = build_activation_layer(dict(act_cfg)) if act_cfg else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gnconv(x)
        if self.stride > 1:
            x = F.max_pool2d(x, 1, stride=self.stride)
        return self.act(self.norm(x))
