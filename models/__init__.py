"""HorNet models. Importing this package registers the ``hornet_*`` variants with timm."""
from .hornet import (
    CheckpointMismatchError, GlobalLocalFilter, GnConv, HORNET_ARCHS, HorBlock, HorNet,
    check_state_dict, checkpoint_filter_fn, layer_id, resize_complex_weight, set_dft_filter,
    unwrap_checkpoint,
)
