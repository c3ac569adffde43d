"""HorNet models. Importing this package registers the ``hornet_*`` variants with timm.

``hornet`` (the network), ``ops`` (its fast paths), ``state_dict`` (reading weight files) and
``layer_decay`` (lr decay groups) are imported with it; ``models.mm_hornet`` (OpenMMLab backbone,
layer-decay constructor) is imported on demand only.
"""
from ._alias import alias_other_name
from .hornet import (
    HORNET_ARCHS,
    MIN_INPUT_SIZE,
    GlobalLocalFilter,
    GnConv,
    HorBlock,
    HorNet,
    HorNetFeatures,
    checkpoint_filter_fn,
    compile_blocks,
    run_stage,
    set_dft_filter,
)
from .layer_decay import dense_layer_id, layer_id, param_groups_layer_decay
from .ops import depthwise_conv2d, global_filter, linear_gate, linear_post, resize_complex_weight
from .state_dict import (
    CheckpointFileError,
    CheckpointMismatchError,
    check_state_dict,
    from_mmpretrain,
    read_weights,
    resize_gf_filters,
    to_mmpretrain,
    unwrap_checkpoint,
)

__all__ = [
    'CheckpointFileError', 'CheckpointMismatchError', 'GlobalLocalFilter', 'GnConv', 'HORNET_ARCHS', 'HorBlock',
    'HorNet', 'HorNetFeatures', 'MIN_INPUT_SIZE', 'check_state_dict', 'checkpoint_filter_fn', 'compile_blocks',
    'dense_layer_id', 'depthwise_conv2d', 'from_mmpretrain', 'global_filter', 'layer_id', 'linear_gate',
    'linear_post', 'param_groups_layer_decay', 'read_weights', 'resize_complex_weight', 'resize_gf_filters',
    'run_stage', 'set_dft_filter', 'to_mmpretrain', 'unwrap_checkpoint',
]

alias_other_name(__name__)  # `hornet` (pip install -e .) and `models` (repo root) are this one module
