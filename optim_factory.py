"""Optimizer with layer-wise lr decay groups, and the per-step lr / weight-decay schedules."""
import argparse
import math
from collections.abc import Callable, Sequence

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

import models

NUM_LAYER_GROUPS = 14  # the HorNet grouping of the spec: ids 0..13


def param_groups_layer_decay(
        model: torch.nn.Module,
        weight_decay: float = 0.05,
        layer_decay: float = 1.0,
        skip_list: Sequence[str] = (),
        get_layer_id: Callable[[str], int] = models.layer_id,
        num_layers: int = NUM_LAYER_GROUPS,
) -> list[dict]:
    """Parameter groups keyed by (layer id, decay / no decay).

    Group ``i`` gets ``lr_scale = layer_decay ** (num_layers - 1 - i)`` (the scheduler multiplies
    the lr by it). 1-D parameters (norm affine, biases, layer scales) and names in ``skip_list``
    get no weight decay.

    Args:
        model: The model (without a DDP wrapper).
        weight_decay: Weight decay of the decayed groups.
        layer_decay: Per-layer lr decay factor; 1.0 gives every group scale 1.
        skip_list: Parameter names that never get weight decay.
        get_layer_id: Maps a parameter name to its group id.
        num_layers: Number of group ids.

    Returns:
        A list of dicts for ``torch.optim`` with ``params``, ``weight_decay``, ``use_wd``,
        ``lr_scale``, ``layer_id`` and the parameter ``names`` (for inspection).
    """
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name in skip_list
        lid = get_layer_id(name)
        key = f'layer_{lid}_{"no_decay" if no_decay else "decay"}'
        if key not in groups:
            groups[key] = dict(
                params=[], names=[], layer_id=lid, use_wd=not no_decay,
                weight_decay=0.0 if no_decay else weight_decay,
                lr_scale=layer_decay ** (num_layers - 1 - lid),
            )
        groups[key]['params'].append(param)
        groups[key]['names'].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (groups[k]['layer_id'], k))]


def create_optimizer(args: argparse.Namespace, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``--opt`` over :func:`param_groups_layer_decay` groups."""
    skip = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
    groups = param_groups_layer_decay(model, args.weight_decay, args.layer_decay, skip_list=skip)
    for g in groups:
        del g['names']  # torch.optim keeps unknown keys; names would bloat the checkpoint
    kwargs = dict(momentum=args.momentum)
    if args.opt_eps is not None:
        kwargs['eps'] = args.opt_eps
    if args.opt_betas is not None:
        kwargs['betas'] = tuple(args.opt_betas)
    return create_optimizer_v2(groups, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, **kwargs)


class Schedules:
    """Per-optimizer-step lr (timm cosine with linear warmup) and weight-decay (cosine) values.

    Stateless in the step number, so a resumed run reproduces the schedule exactly.

    Args:
        optimizer: Optimizer whose groups carry ``lr_scale`` and ``weight_decay``.
        args: Uses ``lr, min_lr, epochs, warmup_epochs, warmup_steps, weight_decay,
            weight_decay_end``.
        steps_per_epoch: Optimizer steps per epoch (batches // update_freq).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, args: argparse.Namespace, steps_per_epoch: int):
        self.optimizer = optimizer
        self.total_steps = max(1, args.epochs * steps_per_epoch)
        self.warmup_steps = args.warmup_steps if args.warmup_steps > 0 else args.warmup_epochs * steps_per_epoch
        self.warmup_steps = min(self.warmup_steps, self.total_steps - 1)
        self.lr = CosineLRScheduler(
            optimizer, t_initial=max(1, self.total_steps - self.warmup_steps), lr_min=args.min_lr,
            warmup_t=self.warmup_steps, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
        self.wd_start = args.weight_decay
        self.wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end

    def weight_decay_at(self, step: int) -> float:
        t = min(step, self.total_steps) / self.total_steps
        return self.wd_end + 0.5 * (self.wd_start - self.wd_end) * (1 + math.cos(math.pi * t))

    def step(self, step: int) -> None:
        """Set lr and weight decay of every group for optimizer step ``step`` (0-based)."""
        self.lr.step_update(step)
        wd = self.weight_decay_at(step)
        for group in self.optimizer.param_groups:
            if group.get('use_wd', True):
                group['weight_decay'] = wd
