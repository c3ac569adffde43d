"""Layer-wise learning-rate decay for HorNet: the layer ids and the one parameter-group builder.

The rule of the original release, used by the classifier (``optim_factory.py``, and timm through
:meth:`models.HorNet.group_matcher`) and by the OpenMMLab constructor
(``models.mm_hornet.HorNetLayerDecayOptimizerConstructor``) alike:

* each parameter gets a layer id ``L`` (:func:`layer_id`; in a detection/segmentation model
  :func:`dense_layer_id`: the ``backbone.`` parameters by :func:`layer_id`, all others the top id);
* its lr is scaled by ``decay_rate ** (num_layers + 1 - L)``, never clamped (ids above the top one
  give scales above 1, as in the original runs);
* it gets no weight decay if it is 1-D (norm affine, biases, layer scales), its name ends in
  ``.bias`` or it is in ``skip_list``; every other parameter (conv/linear weights, the 4-D GF
  filters) gets the base weight decay;
* parameters are grouped by (id, decay / no decay), groups named ``layer_{L}_{decay|no_decay}``.
"""
from collections.abc import Callable, Sequence

import torch

__all__ = ['dense_layer_id', 'layer_id', 'param_groups_layer_decay']


def layer_id(name: str, num_layers: int = 12, decay_type: str = 'layer_wise') -> int:
    """Layer-decay id of a HorNet trunk parameter: the one rule of the original release.

    ``name`` is relative to the trunk (``downsample_layers.*``, ``stages.*``, ``norm.*``,
    ``head.*``); a dense model strips its ``backbone.`` prefix first and gives every parameter
    outside the backbone the top id ``num_layers + 1`` (:func:`dense_layer_id`). The lr scale is
    ``decay_rate ** (num_layers + 1 - id)``, never clamped.

    ``layer_wise``: ``downsample_layers.k`` -> 0, 2, 3, 12 for k = 0..3; ``stages.0`` -> 1,
    ``stages.1`` -> 2, ``stages.2.b`` -> min(3 + b // 2, 11), ``stages.3`` -> 12; any other name
    -> ``num_layers + 1``. The constants 11 and 12 are fixed (they do not follow ``num_layers``),
    so with ``num_layers`` < 11 late stage-2 blocks, ``downsample_layers.3`` and ``stages.3``
    get ids above the top one and lr scales above 1, exactly as the original runs did.

    ``stage_wise``: every ``downsample_layers.k`` -> 0, ``stages.s`` -> s + 1, any other name
    -> ``num_layers + 1``.

    The classifier uses ``num_layers=12`` (ids 0..13; ``head`` and ``norm`` -> 13).
    """
    top = num_layers + 1
    parts = name.split('.')
    if decay_type == 'layer_wise':
        if parts[0] in ('cls_token', 'mask_token', 'pos_embed'):
            return 0
        if parts[0] == 'downsample_layers':
            return (0, 2, 3, 12)[int(parts[1])]
        if parts[0] == 'stages':
            stage = int(parts[1])
            if stage == 2:
                return min(3 + int(parts[2]) // 2, 11)
            return (1, 2, None, 12)[stage]
        return top
    if decay_type == 'stage_wise':
        if parts[0] == 'downsample_layers':
            return 0
        if parts[0] == 'stages':
            return int(parts[1]) + 1
        return top
    raise ValueError(f"decay_type must be 'layer_wise' or 'stage_wise', got {decay_type!r}")


def dense_layer_id(name: str, num_layers: int = 12, decay_type: str = 'layer_wise') -> int:
    """Layer id of a parameter of a detection/segmentation model: a ``backbone.*`` parameter gets
    :func:`layer_id` of its name without the prefix (the backbone's output norms ``norm{i}`` the top
    id), every other one (neck, heads) the top id ``num_layers + 1``."""
    if name.startswith('backbone.'):
        return layer_id(name[len('backbone.'):], num_layers=num_layers, decay_type=decay_type)
    return num_layers + 1


def param_groups_layer_decay(
        model: torch.nn.Module,
        weight_decay: float = 0.05,
        layer_decay: float = 1.0,
        skip_list: Sequence[str] = (),
        get_layer_id: Callable[[str], int] | None = None,
        num_layers: int = 12,
) -> list[dict]:
    """Parameter groups keyed by (layer id, decay / no decay): the rule of this module's docstring.

    Args:
        model: The model (without a DDP wrapper); frozen parameters are left out.
        weight_decay: Weight decay of the decayed groups.
        layer_decay: Per-layer lr decay factor; 1.0 gives every group scale 1.
        skip_list: Parameter names that never get weight decay.
        get_layer_id: Maps a parameter name to its layer id (default: :func:`layer_id`,
            ``layer_wise``, with ``num_layers``; a dense model passes :func:`dense_layer_id`).
        num_layers: ``n`` of the rule: the top id is ``n + 1`` (lr scale 1).

    Returns:
        Groups ordered by layer id, each a dict with ``params``, the parameter ``names`` (for
        inspection), ``group_name`` (``layer_{L}_{decay|no_decay}``), ``layer_id``, ``use_wd``,
        ``weight_decay`` and ``lr_scale`` (the scheduler multiplies the lr by it).
    """
    if get_layer_id is None:
        def get_layer_id(name: str) -> int:
            return layer_id(name, num_layers=num_layers, decay_type='layer_wise')
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim == 1 or name.endswith('.bias') or name in skip_list
        lid = get_layer_id(name)
        key = f'layer_{lid}_{"no_decay" if no_decay else "decay"}'
        if key not in groups:
            groups[key] = dict(
                params=[], names=[], group_name=key, layer_id=lid, use_wd=not no_decay,
                weight_decay=0.0 if no_decay else weight_decay,
                lr_scale=layer_decay ** (num_layers + 1 - lid),
            )
        groups[key]['params'].append(param)
        groups[key]['names'].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (groups[k]['layer_id'], k))]
