"""HorNet models. Importing this package registers the ``hornet_*`` variants with timm.

``models.mm_hornet`` (OpenMMLab backbone, layer-decay constructor) is imported on demand only.
"""
from ._alias import alias_other_name
from .hornet import (
    HORNET_ARCHS,
    CheckpointMismatchError,
    GlobalLocalFilter,
    GnConv,
    HorBlock,
    HorNet,
    HorNetFeatures,
    check_state_dict,
    checkpoint_filter_fn,
    compile_blocks,
    global_filter,
    layer_id,
    resize_complex_weight,
    run_stage,
    set_dft_filter,
    unwrap_checkpoint,
)

__all__ = [
    'CheckpointMismatchError', 'GlobalLocalFilter', 'GnConv', 'HORNET_ARCHS', 'HorBlock', 'HorNet', 'HorNetFeatures',
    'check_state_dict', 'checkpoint_filter_fn', 'compile_blocks', 'global_filter', 'layer_id', 'resize_complex_weight',
    'run_stage', 'set_dft_filter', 'unwrap_checkpoint',
]

alias_other_name(__name__)  # `hornet` (pip install -e .) and `models` (repo root) are this one module
