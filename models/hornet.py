"""HorNet: vision backbones built on recursive gated convolution (gnConv).

Paper: "HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions",
Rao et al., NeurIPS 2022 (arXiv:2207.14284).

The network as the paper's figure 2 draws it, top to bottom: the global-local filter (GF mixer),
gnConv, the HorNet block, the model and its variants, then the checkpoint adapter and the timm
registry. Parameter names follow the officially released checkpoints exactly, so they load with
``strict=True``; detection and segmentation (``models/mm_hornet.py``) wrap this model, they do not
copy it.

The layers call the fast paths of ``models/ops.py`` (global filter, depthwise conv, fused linear
maps), which compute the same formulas faster; on CUDA they take a lean path instead, which applies
the scales after the products rather than folding them into the weights (``ops.folds_weights``).
``benchmarks/reference_hornet.py`` writes the whole network in the plain formulas of the paper
and is the oracle the tests compare this file against.
Reading and converting weight files is ``models/state_dict.py``, layer decay ``models/layer_decay.py``.
"""
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import DropPath, get_device_dtype, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._features import FeatureGetterNet, feature_take_indices
from torch.utils.checkpoint import checkpoint

from .hub import RELEASE_BASE, cached_download, mirrored
from .layer_decay import layer_id
from .ops import (
    Conv2d,
    LayerNorm,
    LayerNorm2d,
    Linear,
    autocast_weights,
    clear_weight_cache,
    depthwise_conv2d,
    folds_weights,
    gf_filter,
    global_filter,
    interleave_channels,
    layer_norm,
    linear_gate,
    linear_post,
    scale_add,
    scale_params,
)
from .state_dict import check_state_dict, from_mmpretrain, resize_gf_filters, unwrap_checkpoint

__all__ = [
    'GlobalLocalFilter', 'GnConv', 'HorBlock', 'HorNet', 'HORNET_ARCHS', 'MIN_INPUT_SIZE', 'HorNetFeatures',
    'checkpoint_filter_fn', 'compile_blocks', 'run_stage', 'set_dft_filter',
]

# FX tracing keeps these two as leaves (they read shapes); torch.fx.wrap patches the names it is
# called with in this module's namespace, where the layers look them up
torch.fx.wrap('global_filter')
torch.fx.wrap('depthwise_conv2d')

FilterSize = tuple[int, int]


def _no_torchscript(self):
    # torch.jit.script is deprecated in torch 2.x; say so instead of failing deep inside the compiler
    raise RuntimeError(
        f'{type(self).__name__} does not support TorchScript (torch.jit.script is deprecated in torch 2.x). '
        'Use torch.compile, torch.export or export.py (ONNX / torch.export) instead.')


class GlobalLocalFilter(nn.Module):
    """Global-local filter, the GF spatial mixer of HorNet's last two stages.

    Half of the channels go through a depthwise 3x3 conv (local), the other half through a learned
    filter in the 2-D Fourier domain (global); the halves are interleaved channel by channel.

    Args:
        dim: Number of input (= output) channels; must be even.
        h: Filter height (frequency rows).
        w: Filter width (frequency columns, ``W // 2 + 1`` of the feature map it was made for).
    """
    __prepare_scriptable__ = _no_torchscript

    def __init__(self, dim: int, h: int = 14, w: int = 8, device=None, dtype=None):
        super().__init__()
        if dim % 2:
            raise ValueError(f'GlobalLocalFilter needs an even channel count, got {dim}')
        dd = dict(device=device, dtype=dtype)
        self.dw = nn.Conv2d(dim // 2, dim // 2, kernel_size=3, padding=1, bias=False, groups=dim // 2, **dd)
        self.complex_weight = nn.Parameter(torch.empty(dim // 2, h, w, 2, **dd))
        trunc_normal_(self.complex_weight, std=.02)
        self.pre_norm = LayerNorm2d(dim, eps=1e-6, **dd)
        self.post_norm = LayerNorm2d(dim, eps=1e-6, **dd)
        # Real-matrix DFT instead of torch.fft: for export (ONNX has no FFT). See set_dft_filter().
        self.use_dft = False

    def _apply(self, fn, recurse=True):
        # model.to(memory_format=torch.channels_last) makes every 4-D parameter channels-last; the
        # (C, h, w, 2) filter is no image, and the FFT product needs it dense: a copy per forward
        module = super()._apply(fn, recurse)
        w = self.complex_weight
        if not w.is_contiguous():
            w.data = w.data.contiguous()
        return module

    def global_filter(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the learned frequency filter to ``x`` in float32; returns x's dtype."""
        return global_filter(x, self.complex_weight, self.use_dft)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """``post_norm(interleave(dw(x_local), global_filter(x_global))) * scale`` (the scale is
        folded into the post-norm's affine, one pass fewer over the largest gnConv tensor)."""
        c = self.dw.in_channels
        # split, not two slices: the backward of a slice zero-fills a full-size gradient first
        x_local, x_global = torch.split(self.pre_norm(x), c, dim=1)
        n = self.post_norm
        weight, bias = scale_params(x, scale, n.weight, n.bias)
        if not folds_weights(x):
            # CUDA: one pass makes the half dense and float32 for the FFT; the interleaving copy
            # brings the result back to the autocast dtype, and the post-norm stays in it. The
            # weights go through the lean path's casts (kept across forwards for inference)
            x_local = self.dw._conv_forward(x_local, *autocast_weights(x_local, self.dw.weight, self.dw.bias))
            x_global = x_global.to(torch.float32, memory_format=torch.contiguous_format)
            x_global = global_filter(x_global, gf_filter(x_global, self.complex_weight), self.use_dft)
            x = interleave_channels(x_local, x_global)
            return layer_norm(x, n.normalized_shape, weight, bias, n.eps).permute(0, 3, 1, 2)
        x_local = self.dw(x_local)
        # dense NCHW for the FFT: over a channels-last slice (channels innermost) it runs slower
        # (benchmarks/results/cpu_kernels_2threads.md)
        x_global = self.global_filter(x_global.contiguous()).to(x_local.dtype)
        # interleave: channel 2k is local channel k, 2k+1 is global channel k; built channels-last
        # (B, H, W, C, 2) so the NCHW view of the result is channels_last, like the rest of the net
        x = torch.stack((x_local.permute(0, 2, 3, 1), x_global.permute(0, 2, 3, 1)), dim=-1).flatten(-2)
        return F.layer_norm(x, n.normalized_shape, weight, bias, n.eps).permute(0, 3, 1, 2)


MixerSpec = str | Callable[[int], nn.Module]


def _as_linear(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A 1x1 conv's ``(weight, bias)`` as a linear map over the channels of a channels-last tensor."""
    return conv.weight.flatten(1), conv.bias


class GnConv(nn.Module):
    """Recursive gated convolution (gnConv), a plug-and-play spatial-mixing layer.

    ``proj_in`` maps the input to ``2 * dim`` channels, split into ``p`` (``d_0`` channels) and
    ``q`` (``d_0 + ... + d_{n-1}``); ``q`` is spatially mixed, scaled and split into gates
    ``g_k``; then ``y = p * g_0`` and ``y = pws[k-1](y) * g_k`` for ``k = 1..n-1``, with
    ``d_k = dim / 2 ** (n - 1 - k)``. ``proj_out`` maps the result to ``out_dim``.

    Args:
        dim: Width ``C`` of the recursion (``d_{n-1}``); must be divisible by ``2 ** (order - 1)``.
        order: Interaction order ``n`` (>= 1).
        scale: Multiplier ``s`` applied to the mixed gates (HorNet uses 1/3).
        mixer: Spatial mixer over ``sum(d)`` channels: ``'dwconv'`` (depthwise
            ``kernel_size`` x ``kernel_size`` conv with bias), ``'gf'`` (:class:`GlobalLocalFilter`
            with ``filter_size``), or a callable ``channels -> nn.Module``.
        kernel_size: Kernel of the ``'dwconv'`` mixer.
        filter_size: ``(h, w)`` of the ``'gf'`` mixer's frequency filter.
        in_dim: Input width (default ``dim``).
        out_dim: Output width (default ``dim``).
        proj_out: If False, no output projection (then ``out_dim`` must equal ``dim``).

    Example:
        >>> from models import GnConv
        >>> layer = GnConv(64, order=3, mixer='dwconv', kernel_size=7)
        >>> layer(torch.randn(2, 64, 28, 28)).shape
        torch.Size([2, 64, 28, 28])
    """

    __prepare_scriptable__ = _no_torchscript

    def __init__(
            self,
            dim: int,
            order: int = 5,
            scale: float = 1.0,
            mixer: MixerSpec = 'dwconv',
            kernel_size: int = 7,
            filter_size: FilterSize = (14, 8),
            in_dim: int | None = None,
            out_dim: int | None = None,
            proj_out: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if order < 1:
            raise ValueError(f'gnConv order must be >= 1, got {order}')
        if dim % (2 ** (order - 1)):
            raise ValueError(f'gnConv width {dim} is not divisible by 2**(order-1) = {2 ** (order - 1)}')
        dd = dict(device=device, dtype=dtype)
        in_dim = dim if in_dim is None else in_dim
        out_dim = dim if out_dim is None else out_dim
        if not proj_out and out_dim != dim:
            raise ValueError(f'out_dim={out_dim} differs from dim={dim}, which needs proj_out=True')
        self.order = order
        self.dims = [dim // 2 ** i for i in range(order)][::-1]
        self.scale = scale
        self.proj_in = nn.Conv2d(in_dim, 2 * dim, kernel_size=1, **dd)
        mix_dim = sum(self.dims)
        self.mixer = mixer if isinstance(mixer, str) else 'custom'
        if mixer == 'dwconv':
            self.dwconv = nn.Conv2d(
                mix_dim, mix_dim, kernel_size, padding=(kernel_size - 1) // 2, groups=mix_dim, **dd)
        elif mixer == 'gf':
            self.dwconv = GlobalLocalFilter(mix_dim, h=filter_size[0], w=filter_size[1], **dd)
        elif callable(mixer):
            self.dwconv = mixer(mix_dim)
        else:
            raise ValueError(f"unknown gnConv mixer {mixer!r}; use 'dwconv', 'gf' or a callable")
        self.proj_out = nn.Conv2d(dim, out_dim, kernel_size=1, **dd) if proj_out else nn.Identity()
        self.pws = nn.ModuleList(
            nn.Conv2d(self.dims[i], self.dims[i + 1], kernel_size=1, **dd) for i in range(order - 1))

    def _mix(self, q: torch.Tensor) -> torch.Tensor:
        """``dwconv(q) * scale`` on an NCHW tensor, the scale folded into the mixer's last affine map."""
        if self.mixer == 'dwconv':
            m = self.dwconv
            weight, bias = scale_params(q, self.scale, m.weight, m.bias)
            return depthwise_conv2d(q, weight, bias, m.padding)
        if self.mixer == 'gf':
            return self.dwconv(q, scale=self.scale)
        return self.dwconv(q) * self.scale

    def forward(self, x: torch.Tensor, out_scale: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """gnConv of an NCHW ``x``; ``out_scale`` (per output channel) multiplies the result, folded
        into ``proj_out`` (HorBlock passes its layer scale ``gamma1``); ``residual`` (NCHW, the
        shape of the result) is added to it, in the same kernel as ``proj_out`` for CPU inference.

        Speed: the 1x1 convs run as matrix products on the channels-last view (B, H, W, C), free
        for a channels_last ``x`` (as inside HorNet): no layout copies, and no fall-back to torch's
        slow 1x1-conv path, which CPU convolution takes for small batches on one thread. For CPU
        inference each gate product is fused into its matrix product (:func:`models.linear_gate`).
        """
        if not folds_weights(x):
            return self._forward_lean(x, out_scale, residual)
        x = x.permute(0, 2, 3, 1)  # channels-last view: each 1x1 conv below is a matrix product
        w_in, b_in = _as_linear(self.proj_in)
        d0 = self.dims[0]
        # proj_in(x) = [p, q]; q is mixed and split into the gates g_0 .. g_{n-1}. q and p are two
        # products: both come out dense (a channel slice of a channels-last tensor is strided, and
        # the depthwise conv would copy it), and p's product takes its gate
        q = linear_post(x, w_in[d0:], b_in[d0:]).permute(0, 3, 1, 2)
        g = torch.split(self._mix(q).permute(0, 2, 3, 1), self.dims, dim=-1)
        # the recursion: y = p * g_0, then y = pws[k](y) * g_{k+1}
        y = linear_gate(x, w_in[:d0], b_in[:d0], g[0])
        for k in range(self.order - 1):  # indexed, not zipped: FX-traceable
            y = linear_gate(y, *_as_linear(self.pws[k]), g[k + 1])
        po = self.proj_out
        res = residual.permute(0, 2, 3, 1) if residual is not None else None
        if isinstance(po, nn.Conv2d):
            weight, bias = po.weight.flatten(1), po.bias
            if out_scale is not None:
                weight, bias = weight * out_scale[:, None], bias * out_scale
            y = linear_post(y, weight, bias, 'add', res) if res is not None else linear_post(y, weight, bias)
        else:
            if out_scale is not None:
                y = y * out_scale
            if res is not None:
                y = y + res
        return y.permute(0, 3, 1, 2)

    def _forward_lean(self, x: torch.Tensor, out_scale: torch.Tensor | None,
                      residual: torch.Tensor | None) -> torch.Tensor:
        """The same as :meth:`forward`, for CUDA: nothing folded into the weights, so that each is
        cast to the autocast dtype once (``proj_in``'s before it is sliced); ``out_scale`` and the
        residual are applied to ``proj_out``'s result in one kernel."""
        x = x.permute(0, 2, 3, 1)
        w_in, b_in = autocast_weights(x, *_as_linear(self.proj_in))
        d0 = self.dims[0]
        q = F.linear(x, w_in[d0:], b_in[d0:]).permute(0, 3, 1, 2)
        g = torch.split(self._mix(q).permute(0, 2, 3, 1), self.dims, dim=-1)
        y = F.linear(x, w_in[:d0], b_in[:d0]) * g[0]
        for k in range(self.order - 1):
            y = F.linear(y, *autocast_weights(y, *_as_linear(self.pws[k]))) * g[k + 1]
        if isinstance(self.proj_out, nn.Conv2d):
            y = F.linear(y, *autocast_weights(y, *_as_linear(self.proj_out)))
        res = residual.permute(0, 2, 3, 1) if residual is not None else None
        return scale_add(y, out_scale, res).permute(0, 3, 1, 2)


class HorBlock(nn.Module):
    """HorNet block: gnConv spatial mixing, then a channels-last MLP, each residual with layer scale.

    Args:
        dim: Block width.
        drop_path: Stochastic depth rate.
        layer_scale_init_value: Initial layer scale; <= 0 disables layer scale (no parameters).
        mlp_ratio: Hidden width of the MLP relative to ``dim``.
        **gnconv_kwargs: Passed to :class:`GnConv` (order, scale, mixer, filter_size, ...).
    """

    __prepare_scriptable__ = _no_torchscript

    def __init__(
            self,
            dim: int,
            drop_path: float = 0.,
            layer_scale_init_value: float = 1e-6,
            mlp_ratio: float = 4.,
            device=None,
            dtype=None,
            **gnconv_kwargs,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = LayerNorm2d(dim, eps=1e-6, **dd)
        self.gnconv = GnConv(dim, **gnconv_kwargs, **dd)
        self.norm2 = LayerNorm(dim, eps=1e-6, **dd)
        hidden = int(mlp_ratio * dim)
        self.pwconv1 = nn.Linear(dim, hidden, **dd)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(hidden, dim, **dd)
        if layer_scale_init_value > 0:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value), **dd))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value), **dd))
        else:
            self.gamma1 = self.gamma2 = None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # CPU: layer scales are folded into the last linear map of each branch (one pass fewer each);
        # without stochastic depth the residual adds go into those maps too (fused for CPU inference)
        skip = isinstance(self.drop_path, nn.Identity) or not self.training
        if skip:
            x = self.gnconv(self.norm1(x), out_scale=self.gamma1, residual=x)
        else:
            x = x + self.drop_path(self.gnconv(self.norm1(x), out_scale=self.gamma1))
        # MLP channels-last; on a channels_last x the permutes are free views
        x_cl = x.permute(0, 2, 3, 1)
        y = self.norm2(x_cl)
        w2, b2 = self.pwconv2.weight, self.pwconv2.bias
        if not folds_weights(x):  # CUDA: the layer scale rides on the residual add, not on the weight
            y = self.act(F.linear(y, *autocast_weights(y, self.pwconv1.weight, self.pwconv1.bias)))
            y = F.linear(y, *autocast_weights(y, w2, b2))
            if skip:
                return scale_add(y, self.gamma2, x_cl).permute(0, 3, 1, 2)
            return x + self.drop_path(scale_add(y, self.gamma2).permute(0, 3, 1, 2))
        if isinstance(self.act, nn.GELU) and self.act.approximate == 'none':
            y = linear_post(y, self.pwconv1.weight, self.pwconv1.bias, 'gelu')
        else:
            y = self.act(self.pwconv1(y))
        if self.gamma2 is not None:
            w2, b2 = w2 * self.gamma2[:, None], b2 * self.gamma2
        if skip:
            return linear_post(y, w2, b2, 'add', x_cl).permute(0, 3, 1, 2)
        return x + self.drop_path(linear_post(y, w2, b2).permute(0, 3, 1, 2))


def run_stage(downsample: nn.Module, blocks: nn.Sequential, x: torch.Tensor,
              grad_checkpointing: bool = False) -> torch.Tensor:
    """One HorNet stage: its downsample layer, then its blocks (each recomputed in the backward
    pass when ``grad_checkpointing``, which trades compute for activation memory)."""
    # channels_last throughout: LayerNorm2d's permutes become free views and the convs take
    # oneDNN's NHWC path (a no-op when x already is channels_last)
    x = downsample(x.contiguous(memory_format=torch.channels_last))
    if grad_checkpointing and x.requires_grad and not torch.jit.is_scripting():
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x
    return blocks(x)


class HorNet(nn.Module):
    """HorNet image classifier (and, via ``forward_intermediates``, a 4-stage feature pyramid).

    Args:
        in_chans: Input image channels.
        num_classes: Classifier outputs; 0 for no classifier.
        depths: Blocks per stage.
        base_dim: Width of stage 0; stage i has ``base_dim * 2**i`` channels.
        orders: gnConv order per stage.
        scale: gnConv gate scale ``s``.
        gf_sizes: Per stage, the GlobalLocalFilter size ``(h, w)``, or None for a depthwise
            ``kernel_size`` conv.
        kernel_size: Kernel of the depthwise-conv mixer.
        mlp_ratio: MLP expansion in each block.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, rising linearly over all blocks up to this rate.
        layer_scale_init_value: Initial layer scale; <= 0 disables it.
        head_init_scale: Multiplier for the initial classifier weight and bias.
        uniform_init: Xavier-uniform conv/linear init instead of truncated normal.
        global_pool: ``'avg'``, or ``''`` for no pooling in ``forward_head``.
        device: Device to create the parameters on (e.g. ``'meta'``), as every timm model.
        dtype: Parameter dtype.
    """
    __prepare_scriptable__ = _no_torchscript

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            depths: Sequence[int] = (2, 3, 18, 2),
            base_dim: int = 64,
            orders: Sequence[int] = (2, 3, 4, 5),
            scale: float = 1 / 3,
            gf_sizes: Sequence[FilterSize | None] = (None, None, None, None),
            kernel_size: int = 7,
            mlp_ratio: float = 4.,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            layer_scale_init_value: float = 1e-6,
            head_init_scale: float = 1.,
            uniform_init: bool = False,
            global_pool: str = 'avg',
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if not (len(depths) == len(orders) == len(gf_sizes) == 4):
            raise ValueError('depths, orders and gf_sizes need one entry per stage (4)')
        if global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.depths = tuple(depths)
        self.grad_checkpointing = False
        dims = [base_dim * 2 ** i for i in range(4)]

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            Conv2d(in_chans, dims[0], kernel_size=4, stride=4, **dd),
            LayerNorm2d(dims[0], eps=1e-6, **dd),
        ))
        for i in range(1, 4):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(dims[i - 1], eps=1e-6, **dd),
                Conv2d(dims[i - 1], dims[i], kernel_size=2, stride=2, **dd),
            ))

        dp_rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        self.feature_info = []
        cur = 0
        for i in range(4):
            mixer = dict(mixer='dwconv', kernel_size=kernel_size) if gf_sizes[i] is None \
                else dict(mixer='gf', filter_size=tuple(gf_sizes[i]))
            self.stages.append(nn.Sequential(*[
                HorBlock(
                    dims[i], drop_path=dp_rates[cur + j], layer_scale_init_value=layer_scale_init_value,
                    mlp_ratio=mlp_ratio, order=orders[i], scale=scale, **mixer, **dd)
                for j in range(depths[i])
            ]))
            cur += depths[i]
            self.feature_info.append(dict(num_chs=dims[i], reduction=2 ** (i + 2), module=f'stages.{i}'))

        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = LayerNorm(dims[-1], eps=1e-6, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = Linear(dims[-1], num_classes, **dd) if num_classes > 0 else nn.Identity()

        self.apply(self._init_xavier if uniform_init else self._init_trunc_normal)
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    @staticmethod
    def _init_trunc_normal(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @staticmethod
    def _init_xavier(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def train(self, mode: bool = True) -> 'HorNet':
        # each switch (eval() too) drops the inference weight cache (models.ops.weight_cache): no memory
        # held in training, and an evaluation starts from the parameters as they are
        clear_weight_cache(self)
        return super().train(mode)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # 1-D parameters (norms, biases, layer scales) are excluded by the optimizer factory;
        # the GF filters are full tensors and keep weight decay, as in the original training.
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """Parameter name -> layer-decay id for timm (``group_with_matcher`` takes a callable):
        :func:`layer_id`'s ``layer_wise`` rule with 12 layers, or ``stage_wise`` when ``coarse``."""
        decay_type = 'stage_wise' if coarse else 'layer_wise'
        return lambda name: layer_id(name, num_layers=12, decay_type=decay_type)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = Linear(self.num_features, num_classes, **get_device_dtype(self)) \
            if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            self._init_trunc_normal(self.head)
        self.head.train(self.training)  # a new head follows the model's train/eval mode

    def _run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return run_stage(self.downsample_layers[i], self.stages[i], x, self.grad_checkpointing)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward that also returns raw stage outputs (strides 4, 8, 16, 32).

        Args:
            x: Input images.
            indices: Take the last n stages if int, all if None, else these stage indices.
            norm: Unused (HorNet's final norm acts on pooled features), kept for timm's API.
            stop_early: Stop after the last requested stage.
            output_fmt: Only ``'NCHW'``.
            intermediates_only: Return only the list of stage outputs.
        """
        if output_fmt != 'NCHW':
            raise ValueError('HorNet intermediates are NCHW only')
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = max_index if stop_early or intermediates_only else len(self.stages) - 1
        intermediates = []
        for i in range(last + 1):
            x = self._run_stage(i, x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop stages after the last requested one (and the head) for feature extraction.

        HorNet's final ``norm`` acts on pooled features, i.e. it belongs to the head: it goes with
        the head (``prune_head``) as well as with ``prune_norm``, so no parameter is left unused.
        """
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        self.downsample_layers = self.downsample_layers[:max_index + 1]
        if prune_norm or prune_head or max_index < 3:
            self.norm = nn.Identity()
        if prune_head or max_index < 3:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features of the last stage, (B, C3, H/32, W/32)."""
        for i in range(len(self.stages)):
            x = self._run_stage(i, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = self.norm(x.mean((-2, -1)))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def set_dft_filter(model: nn.Module, enable: bool = True) -> nn.Module:
    """Make every GlobalLocalFilter in ``model`` use real DFT matrix products instead of torch.fft
    (same numbers; exportable to ONNX)."""
    for m in model.modules():
        if isinstance(m, GlobalLocalFilter):
            m.use_dft = enable
    return model


# Compiled graphs per compiled block kind: one per stage width (4) for each of training and evaluation,
# for each batch size (training, evaluation, the last smaller batches), with margin
_BLOCK_RECOMPILE_LIMIT = 64


def compile_blocks(model: nn.Module, block_types: tuple[type[nn.Module], ...] = (HorBlock,),
                   **compile_kwargs) -> nn.Module:
    """Regional compilation: ``torch.compile`` every :class:`HorBlock` of ``model`` (every module of
    ``block_types``) in place (``nn.Module.compile``), with ``fullgraph=True`` and static shapes
    unless ``compile_kwargs`` say otherwise; stems, downsampling layers and the head stay eager.

    Blocks of one width share their compiled graph, so the compiler traces, lowers and builds each
    block kind once instead of all 25 (HorNet-T) of a whole-model graph: it compiles in about half
    the time, at the same step time (benchmarks/results/cpu_compile_scope_2threads_cold_cache.md,
    ``--compile blocks``). Parameter names and the state dict stay the same.
    Every compiled module shares one code object (``Module._call_impl``), whose graph count dynamo
    limits (``torch._dynamo.config.recompile_limit``, 8 by default); it is raised to
    ``_BLOCK_RECOMPILE_LIMIT`` so that training and evaluation at a few batch sizes all stay compiled.
    """
    kwargs = dict(fullgraph=True, dynamic=False) | compile_kwargs
    import torch._dynamo
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _BLOCK_RECOMPILE_LIMIT)
    blocks = [m for m in model.modules() if isinstance(m, block_types)]
    if not blocks:
        names = ' or '.join(t.__name__ for t in block_types)
        raise ValueError(f'compile_blocks: {type(model).__name__} has no {names} to compile')
    for m in blocks:
        m.compile(**kwargs)
    return model


# Variant definitions: plain data. ``gf_sizes[i]`` is the GF filter (h, w) of stage i, None = 7x7 dwconv.
_GF_224 = (None, None, (14, 8), (7, 4))
_GF_384 = (None, None, (24, 13), (12, 7))
_NO_GF = (None, None, None, None)
HORNET_ARCHS: dict[str, dict] = {
    f'{size}_{kind}': dict(depths=(2, 3, 18, 2), base_dim=base_dim, gf_sizes=gf)
    for size, base_dim in (('tiny', 64), ('small', 96), ('base', 128), ('large', 192))
    for kind, gf in (('7x7', _NO_GF), ('gf', _GF_224), ('gf_img384', _GF_384))
}


# The smallest input side: the stem (stride 4) and three 2x downsamplings reduce by 32 in all
MIN_INPUT_SIZE = 32


class HorNetFeatures(FeatureGetterNet):
    """timm's ``features_only`` wrapper (``forward_intermediates``) plus ``set_grad_checkpointing``,
    which timm's getter wrapper lacks but its other feature wrappers have."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


_STEM_CONV = 'downsample_layers.0.0'  # the pretrained cfg's `first_conv`


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapt a released or mmpretrain HorNet checkpoint to ``model``.

    Accepts a training checkpoint (``model``/``module`` entry), an mmpretrain checkpoint
    (``state_dict`` entry, ``backbone.``/``head.fc.`` keys) or a bare state dict
    (:func:`models.unwrap_checkpoint`). Resizes each GF ``complex_weight`` to the model's filter
    size and drops the classifier when its shape differs.
    Raises :class:`CheckpointMismatchError` if anything else does not fit.
    """
    state_dict = unwrap_checkpoint(state_dict)
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = from_mmpretrain(state_dict)
    target = model.state_dict()
    resize_gf_filters(state_dict, target)
    # class count differs (or no classifier): the head starts fresh
    out = {k: v for k, v in state_dict.items()
           if not (k.startswith('head.') and (k not in target or v.shape != target[k].shape))}
    head_keys = [k for k in target if k.startswith('head.')]
    check = dict(out)
    if any(k not in out for k in head_keys):
        # a fresh head is expected to be missing; everything else must fit exactly
        check.update({k: target[k] for k in head_keys})
    stem = _STEM_CONV + '.weight'
    if stem in out and stem in target and out[stem].shape[1] != target[stem].shape[1] \
            and out[stem].shape[:1] + out[stem].shape[2:] == target[stem].shape[:1] + target[stem].shape[2:]:
        # another input channel count: timm adapts the stem (pretrained cfg `first_conv`) after this filter
        check[stem] = target[stem]
    check_state_dict(check, model)
    return out


def _weights_overlay(variant: str, kwargs: dict) -> dict:
    """The ``pretrained_cfg_overlay`` that makes timm load ``pretrained=True`` weights by our rules:
    a URL source is fetched by :func:`hub.cached_download` (hash always checked, atomic) and handed
    to timm as a local file; a file, state dict or hub source is left to timm; no source is an error."""
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), overlay).to_dict()
    if cfg.get('source') in ('hf-hub', 'local-dir') or any(cfg.get(k) for k in ('file', 'state_dict', 'hf_hub_id')):
        return overlay
    if not cfg.get('url'):
        name = variant + (f'.{cfg["tag"]}' if cfg.get('tag') else '')
        origin = cfg.get('origin_url') or 'the HorNet release, https://github.com/raoyongming/HorNet'
        raise ValueError(
            f'{name}: no mirrored weights to download. Download the released checkpoint '
            f'({origin}) and pass pretrained_cfg_overlay=dict(file=PATH).')
    return {**overlay, 'file': cached_download(mirrored(cfg['url']))}


def _create_hornet(variant: str, pretrained: bool = False, arch: str | None = None, **kwargs) -> HorNet:
    if pretrained:
        kwargs['pretrained_cfg_overlay'] = _weights_overlay(variant, kwargs)
    model_args = dict(HORNET_ARCHS[arch or variant[len('hornet_'):]])
    model_args.update(kwargs)
    return build_model_with_cfg(
        HorNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls=HorNetFeatures),
        **model_args,
    )


def eval_data_config(input_size: int, crop_pct: float | None = None,
                     imagenet_default_mean_and_std: bool = True) -> dict:
    """The one evaluation preprocessing at ``input_size``, as timm's data config (the keys of
    ``timm.data.resolve_data_config``): ``datasets.eval_transform`` builds it, the pretrained cfgs
    and an exported hub ``config.json`` state it, so timm's ``create_transform`` gives the same.

    As the original: from 384 px up the whole image is resized to a square (``crop_mode='squash'``,
    ``crop_pct`` 1.0; a given ``crop_pct`` is ignored); below, the short side goes to
    ``input_size / crop_pct`` and the centre is cropped (default ``crop_pct``: 224/256, or 1.0 for
    inputs of 32 px or less). ``imagenet_default_mean_and_std`` false: Inception's mean and std.
    """
    if input_size >= 384:
        crop_pct, crop_mode = 1.0, 'squash'
    else:
        crop_mode = 'center'
        if crop_pct is None:
            crop_pct = 1.0 if input_size <= 32 else 224 / 256
    if imagenet_default_mean_and_std:
        mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    else:
        mean, std = IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
    return {'input_size': (3, input_size, input_size), 'interpolation': 'bicubic', 'crop_pct': crop_pct,
            'crop_mode': crop_mode, 'mean': mean, 'std': std}


def _cfg(url: str = '', img_size: int = 224, **kwargs) -> dict:
    return {
        'url': url,
        'num_classes': 1000, **eval_data_config(img_size), 'pool_size': (img_size // 32, img_size // 32),
        'first_conv': _STEM_CONV, 'classifier': 'head',
        'license': 'mit', 'paper_ids': 'arXiv:2207.14284',
        **kwargs,
    }


_ZOO = 'https://cloud.tsinghua.edu.cn/f/{}/?dl=1'  # the release's links (origin_url): no file name to cache
# The released ImageNet-1K weights as mirrored by OpenMMLab, each name ending in its sha256 prefix
# (mmpretrain 1.2's configs/hornet/metafile.yml lists all six). pretrained=True downloads them into
# torch's hub cache through models/hub.py (hash checked; HORNET_WEIGHTS_MIRROR replaces the base).
_MIRROR = RELEASE_BASE + 'hornet-{}_3rdparty_in1k_20220915-{}.pth'
# Not here: the 384 px HorNet-B GF has no mirrored file, and for HorNet-L older mmpretrain documents
# name hornet-large{,-gf,-gf384}_3rdparty_in21k_20220909-{9ccef421,3aea3b61,80894290}.pth, which the
# installed metafile does not confirm and whose names say ImageNet-22K heads, not the in22k_ft_in1k
# 1000-class weights these tags describe. Those tags raise an error naming their origin_url.
default_cfgs = generate_default_cfgs({
    'hornet_tiny_7x7.in1k': _cfg(
        url=_MIRROR.format('tiny', '0e8eedff'), origin_url=_ZOO.format('1ca970586c6043709a3f')),
    'hornet_tiny_gf.in1k': _cfg(
        url=_MIRROR.format('tiny-gf', '4c35a66b'), origin_url=_ZOO.format('511faad0bde94dfcaa54')),
    'hornet_small_7x7.in1k': _cfg(
        url=_MIRROR.format('small', '5935f60f'), origin_url=_ZOO.format('46422799db2941f7b684')),
    'hornet_small_gf.in1k': _cfg(
        url=_MIRROR.format('small-gf', '649ca492'), origin_url=_ZOO.format('8405c984bf084d2ba85a')),
    'hornet_base_7x7.in1k': _cfg(
        url=_MIRROR.format('base', 'a06176bb'), origin_url=_ZOO.format('5c86cb3d655d4c17a959')),
    'hornet_base_gf.in1k': _cfg(
        url=_MIRROR.format('base-gf', '82c06fa7'), origin_url=_ZOO.format('6c84935e63b547f383fb')),
    'hornet_base_gf_img384.in1k': _cfg(img_size=384),
    # HorNet-L: pre-trained on ImageNet-22K; the released files carry a 1000-class head
    'hornet_large_7x7.in22k_ft_in1k': _cfg(origin_url=_ZOO.format('a76f7ce114ad4e9c8ffb')),
    'hornet_large_gf.in22k_ft_in1k': _cfg(origin_url=_ZOO.format('12c99a79e77341e59681')),
    'hornet_large_gf_img384.in22k_ft_in1k': _cfg(img_size=384, origin_url=_ZOO.format('9253bd0d50c84ab1b71e')),
})


@register_model
def hornet_tiny_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_tiny_7x7', pretrained, **kwargs)


@register_model
def hornet_tiny_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_tiny_gf', pretrained, **kwargs)


@register_model
def hornet_small_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_small_7x7', pretrained, **kwargs)


@register_model
def hornet_small_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_small_gf', pretrained, **kwargs)


@register_model
def hornet_base_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_base_7x7', pretrained, **kwargs)


@register_model
def hornet_base_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_base_gf', pretrained, **kwargs)


@register_model
def hornet_base_gf_img384(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_base_gf_img384', pretrained, **kwargs)


@register_model
def hornet_large_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_large_7x7', pretrained, **kwargs)


@register_model
def hornet_large_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_large_gf', pretrained, **kwargs)


@register_model
def hornet_large_gf_img384(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_large_gf_img384', pretrained, **kwargs)
