"""mmpretrain's HorNet classifier with the architecture and the weights of one of ours: the
benchmark's ``mmpretrain`` yardstick (benchmarks/throughput.py) and a conformance check
(tests/test_mmpretrain.py: the same logits, and mmpretrain checkpoints load into ours).

mmpretrain is an optional dependency (installed by ``bash tools/install_openmmlab.sh``, pinned
there); nothing in ``models/`` imports it.
"""
import torch
import torch.nn as nn

# our (= the released) keys -> an mmpretrain ImageClassifier's; models.from_mmpretrain is the inverse
from models.state_dict import to_mmpretrain as to_mmpretrain_state_dict

__all__ = ['mmpretrain_available', 'to_mmpretrain_state_dict', 'mmpretrain_arch', 'MMPretrainHorNet',
           'mmpretrain_from']

INSTALL_HINT = "mmpretrain is not installed; 'bash tools/install_openmmlab.sh' installs it (pinned)"


def mmpretrain_available() -> bool:
    try:
        import mmpretrain.models  # noqa: F401
    except ImportError:
        return False
    return True


def mmpretrain_arch(model: nn.Module) -> dict:
    """mmpretrain's custom-``arch`` dict for a ``models.HorNet``: base width, depths, gnConv orders and
    each stage's mixer (``DW`` with its kernel, or ``GF`` with its filter size)."""
    gnconvs = [stage[0].gnconv for stage in model.stages]
    dw_cfg = []
    for g in gnconvs:
        if hasattr(g.dwconv, 'complex_weight'):
            h, w = g.dwconv.complex_weight.shape[1:3]
            dw_cfg.append(dict(type='GF', h=int(h), w=int(w)))
        else:
            dw_cfg.append(dict(type='DW', kernel_size=int(g.dwconv.kernel_size[0])))
    return dict(base_dim=int(model.stages[0][0].norm2.normalized_shape[0]), depths=[len(s) for s in model.stages],
                orders=[g.order for g in gnconvs], dw_cfg=dw_cfg)


class MMPretrainHorNet(nn.Module):
    """An mmpretrain ``ImageClassifier`` (``HorNet`` backbone, pooled features normalized, then
    ``LinearClsHead``) called on image tensors: ``forward(x)`` returns the logits."""

    def __init__(self, arch: dict, num_classes: int, in_chans: int = 3, scale: float = 1 / 3,
                 drop_path_rate: float = 0.):
        super().__init__()
        try:
            from mmengine.registry import DefaultScope
            from mmpretrain.models import ImageClassifier
        except ImportError as e:
            raise ImportError(INSTALL_HINT) from e
        # the type names resolve in mmpretrain's registry whatever scope is current (an mmdet/mmseg
        # run leaves its own, where 'HorNet' is this project's backbone and mmpretrain's heads are missing)
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            self.classifier = ImageClassifier(
                backbone=dict(type='HorNet', arch=arch, in_channels=in_chans, scale=scale,
                              drop_path_rate=drop_path_rate),
                head=dict(type='LinearClsHead', num_classes=num_classes, in_channels=arch['base_dim'] * 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.head(self.classifier.backbone(x))


def mmpretrain_from(model: nn.Module) -> MMPretrainHorNet:
    """An :class:`MMPretrainHorNet` with the architecture and the weights of a ``models.HorNet``
    (``load_state_dict(strict=True)``: every key maps)."""
    gnconv = model.stages[0][0].gnconv
    net = MMPretrainHorNet(mmpretrain_arch(model), num_classes=model.head.out_features,
                           in_chans=model.downsample_layers[0][0].in_channels, scale=gnconv.scale)
    net.classifier.load_state_dict(to_mmpretrain_state_dict(model.state_dict()), strict=True)
    return net
