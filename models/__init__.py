"""HorNet models. Importing this package registers the ``hornet_*`` variants with timm.

``models.mm_hornet`` (OpenMMLab backbone, layer-decay constructor) is imported on demand only.
"""
from .hornet import (
    CheckpointMismatchError, GlobalLocalFilter, GnConv, HORNET_ARCHS, HorBlock, HorNet,
    check_state_dict, checkpoint_filter_fn, layer_id, resize_complex_weight, run_stage, set_dft_filter,
    unwrap_checkpoint,
)

__all__ = [
    'CheckpointMismatchError', 'GlobalLocalFilter', 'GnConv', 'HORNET_ARCHS', 'HorBlock', 'HorNet',
    'check_state_dict', 'checkpoint_filter_fn', 'layer_id', 'resize_complex_weight', 'run_stage',
    'set_dft_filter', 'unwrap_checkpoint',
]
