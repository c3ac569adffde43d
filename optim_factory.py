"""Optimizer with layer-wise lr decay groups, and the per-step lr / weight-decay schedules."""
import argparse
import math

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from models.layer_decay import param_groups_layer_decay

__all__ = ['NUM_LAYERS', 'Schedules', 'create_optimizer', 'param_groups_layer_decay']

NUM_LAYERS = 12  # the classifier's layer-decay depth: ids 0..13, as the original fine-tuning


def create_optimizer(args: argparse.Namespace, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``--opt`` over :func:`models.layer_decay.param_groups_layer_decay`
    groups (``NUM_LAYERS`` layers; the rule is explained there)."""
    skip = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
    groups = param_groups_layer_decay(model, args.weight_decay, args.layer_decay, skip_list=skip,
                                      num_layers=NUM_LAYERS)
    for g in groups:
        del g['names'], g['group_name']  # torch.optim keeps unknown keys; they would bloat the checkpoint
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
