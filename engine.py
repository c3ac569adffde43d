"""One epoch of training, and evaluation (top-1 / top-5 / loss)."""
import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.utils import ModelEmaV3, accuracy

import utils
from optim_factory import Schedules

logger = logging.getLogger('hornet')


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.amp.autocast`` for ``amp_dtype`` (fp16 / bf16), or a no-op for fp32."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.amp.autocast(device_type=device.type, dtype=amp_dtype)


class _StepRecords:
    """Per-step numbers kept on the device and read by the host in one transfer at each progress
    line: a ``loss.item()`` every step would stall the GPU's queue (the host waits for the step to
    finish before launching the next). At each flush the losses are checked in order (the first
    non-finite one stops training, named by its step) and the meters and TensorBoard get exactly the
    values, in the order, that per-step reads would have given."""

    def __init__(self, epoch: int, start_steps: int, update_freq: int, metric_logger: utils.MetricLogger,
                 log_writer: utils.TensorboardLogger | None):
        self.epoch, self.start_steps, self.update_freq = epoch, start_steps, update_freq
        self.metric_logger, self.log_writer = metric_logger, log_writer
        self.records: list[tuple] = []

    def add(self, batch: int, last_micro: bool, loss: torch.Tensor, class_acc: torch.Tensor | None,
            grad_norm: torch.Tensor | None, optimizer: torch.optim.Optimizer) -> None:
        groups = optimizer.param_groups  # host numbers now: the schedule changes them next step
        self.records.append((batch, last_micro, loss, class_acc, grad_norm,
                             max(g['lr'] for g in groups), min(g['lr'] for g in groups),
                             max(g['weight_decay'] for g in groups)))

    def read(self, metric_logger: utils.MetricLogger) -> utils.MetricLogger:
        """``metric_logger`` with every step so far recorded (a step checkpoint saves it)."""
        self.flush()
        return metric_logger

    def flush(self) -> None:
        if not self.records:
            return
        device_values = [v.float().reshape(()) for r in self.records for v in r[2:5] if isinstance(v, torch.Tensor)]
        host = iter(torch.stack(device_values).tolist() if device_values else [])  # the one host sync
        rows = [[next(host) if isinstance(v, torch.Tensor) else v for v in r[2:5]] for r in self.records]
        records, self.records = self.records, []
        for (batch, last_micro, *_, lr, min_lr, wd), (loss, class_acc, grad_norm) in zip(records, rows, strict=True):
            if not math.isfinite(loss):
                raise utils.NonFiniteLossError(
                    f'loss is {loss} at epoch {self.epoch}, step {batch} (batch) / '
                    f'{self.start_steps + batch // self.update_freq} (optimizer step); training stopped, the '
                    'last good checkpoint in the output dir is untouched')
            self.metric_logger.update(loss=loss, class_acc=class_acc, lr=lr, min_lr=min_lr, weight_decay=wd)
            if last_micro:
                self.metric_logger.update(grad_norm=grad_norm)
            if self.log_writer is not None:
                # the original's tags and x axis: every micro-batch, counted from epoch start
                it = self.start_steps * self.update_freq + batch
                self.log_writer.update(head='loss', loss=loss, class_acc=class_acc, step=it)
                self.log_writer.update(head='opt', lr=lr, min_lr=min_lr, weight_decay=wd,
                                       grad_norm=grad_norm if last_micro else None, step=it)


def train_one_epoch(
        model: torch.nn.Module,
        criterion: torch.nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        epoch: int,
        loss_scaler: utils.LossScaler,
        max_norm: float | None = None,
        model_ema: ModelEmaV3 | None = None,
        mixup_fn: Mixup | None = None,
        log_writer: utils.TensorboardLogger | None = None,
        schedules: Schedules | None = None,
        start_steps: int = 0,
        update_freq: int = 1,
        amp_dtype: torch.dtype | None = None,
        print_freq: int = 10,
        num_batches: int | None = None,
        clip_mode: str = 'micro',
        start_batch: int = 0,
        metric_logger: utils.MetricLogger | None = None,
        reseed: Callable[[int], None] | None = None,
        on_step: Callable[[int, Callable[[], utils.MetricLogger]], None] | None = None,
) -> dict[str, float]:
    """Train for one epoch; returns the epoch averages (``loss``, ``class_acc``, ``lr``,
    ``min_lr``, ``weight_decay``, ``grad_norm``), the original's names.

    The optimizer steps every ``update_freq`` batches (gradient accumulation, loss divided by
    ``update_freq``); ``schedules`` sets lr and weight decay before each step from the global
    step ``start_steps + step``. A trailing partial accumulation is dropped so every step sees
    the same number of samples.

    Gradient clipping (``max_norm``): in fp32 with ``clip_mode='micro'`` (the original's
    behaviour) the gradient accumulated so far is clipped after every micro-batch backward, and
    only when ``max_norm > 0.1``; under DDP every micro-batch is then all-reduced first (no
    ``no_sync``), so all ranks clip the same gradient. With ``clip_mode='step'``, and always with
    autocast (``amp_dtype``), the full accumulated gradient is clipped once per optimizer step
    (when ``max_norm > 0``).

    The host reads the step's numbers (loss, accuracy, gradient norm) only at each progress line
    (``print_freq``) and at the epoch's end, in one transfer (:class:`_StepRecords`), so a GPU step
    does not wait for the previous one; the logged numbers are the same.

    Mid-epoch resume: ``data_loader`` starts at batch ``start_batch`` (its sampler skips the
    batches before), ``metric_logger`` holds the epoch's running statistics so far. ``reseed(i)``
    seeds the main process's generators before batch ``i`` (mixup, drop path), so they do not
    depend on where the run resumed. ``on_step(batches_done, read_metrics)`` runs after each
    optimizer step, inside the step's held block (step checkpoints, stops at a step boundary);
    ``read_metrics()`` reads the pending numbers (a host sync) and returns the metric logger.

    Raises:
        utils.NonFiniteLossError: the loss is NaN/inf (names epoch and step of the first such loss,
            found at the next progress line or the epoch's end; nothing of the epoch is saved).
    """
    model.train(True)
    metric_logger = metric_logger if metric_logger is not None else utils.MetricLogger()
    for name in ('lr', 'min_lr'):
        if name not in metric_logger.meters:  # a resumed epoch's meters carry on
            metric_logger.add_meter(name, utils.SmoothedValue(window_size=1, fmt='{value:.6f}'))
    header = f'Epoch: [{epoch}]'
    num_batches = num_batches if num_batches is not None else len(data_loader)
    num_batches -= num_batches % update_freq
    parameters = [p for p in model.parameters() if p.requires_grad]
    if clip_mode not in ('micro', 'step'):
        raise ValueError(f'clip_mode must be "micro" or "step", got {clip_mode!r}')
    micro_clip_rule = amp_dtype is None and clip_mode == 'micro'
    clip_each_micro = micro_clip_rule and max_norm is not None and max_norm > 0.1
    # the original's fp32 path never clips when max_norm <= 0.1
    step_clip = None if micro_clip_rule else max_norm
    optimizer.zero_grad(set_to_none=True)
    pending = _StepRecords(epoch, start_steps, update_freq, metric_logger, log_writer)

    for data_iter_step, (samples, targets) in enumerate(
            metric_logger.log_every(data_loader, print_freq, header, total=num_batches - start_batch),
            start=start_batch):
        if data_iter_step >= num_batches:
            break
        if reseed is not None:
            reseed(data_iter_step)
        # Ctrl-C, SIGTERM or a preemption during the step is handled when it ends (utils.defer_signal)
        with utils.signals_held():
            step = data_iter_step // update_freq
            last_micro = (data_iter_step + 1) % update_freq == 0
            if data_iter_step % update_freq == 0 and schedules is not None:
                schedules.step(start_steps + step)

            samples = samples.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if mixup_fn is not None:
                samples, targets = mixup_fn(samples, targets)

            # DDP: skip the gradient all-reduce on micro-batches that do not step, unless each
            # micro-batch's accumulated gradient is clipped (it must be the global one, as the original)
            skip_sync = not last_micro and not clip_each_micro and hasattr(model, 'no_sync')
            with model.no_sync() if skip_sync else contextlib.nullcontext():
                with autocast(device, amp_dtype):
                    output = model(samples)
                    loss = criterion(output, targets)
                if clip_each_micro:
                    (loss / update_freq).backward()
                    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
                    grad_norm = None
                    if last_micro:
                        optimizer.step()
                        grad_norm = norm.detach()  # norm before the last clip
                else:
                    grad_norm = loss_scaler(loss / update_freq, optimizer, clip_grad=step_clip,
                                            parameters=parameters, update_grad=last_micro)
            if last_micro:
                optimizer.zero_grad(set_to_none=True)
                if model_ema is not None:
                    model_ema.update(model)

            class_acc = (output.argmax(-1) == targets).float().mean() if mixup_fn is None else None
            pending.add(data_iter_step, last_micro, loss.detach(), class_acc, grad_norm if last_micro else None,
                        optimizer)
            # the progress line (utils.MetricLogger.log_every) prints after this step
            if data_iter_step % print_freq == 0 or data_iter_step == num_batches - 1:
                pending.flush()
            if last_micro and on_step is not None:
                on_step(data_iter_step + 1, functools.partial(pending.read, metric_logger))
    pending.flush()

    metric_logger.synchronize_between_processes()
    logger.info(f'Averaged stats: {metric_logger}')
    return {k: meter.global_avg for k, meter in metric_logger.meters.items()}


@torch.no_grad()
def evaluate(data_loader: Iterable, model: torch.nn.Module, device: torch.device,
             amp_dtype: torch.dtype | None = None, distributed: bool = False,
             header: str = 'Test:', print_freq: int = 10) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy over ``data_loader``.

    With ``distributed``, each rank holds a disjoint shard and the sums are all-reduced, so the
    numbers are exact over the whole set.
    """
    criterion = torch.nn.CrossEntropyLoss(reduction='sum')
    model.eval()
    metric_logger = utils.MetricLogger()
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top-1 hits, top-5 hits, count
    for images, target in metric_logger.log_every(data_loader, print_freq, header):
        with utils.signals_held():
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                output = model(images)
            output = output.float()
            n = images.shape[0]
            acc1, acc5 = accuracy(output, target, topk=(1, min(5, output.shape[1])))
            loss_sum = criterion(output, target)
            totals += torch.tensor([loss_sum.item(), acc1.item() * n / 100, acc5.item() * n / 100, n],
                                   dtype=torch.float64)
            metric_logger.update(loss=loss_sum.item() / n, acc1=acc1.item(), acc5=acc5.item())
    if distributed and utils.is_dist_avail_and_initialized():
        reduced = totals.to(utils.reduce_device())
        dist.all_reduce(reduced)
        totals = reduced.cpu()
    count = max(totals[3].item(), 1.0)
    stats = dict(loss=totals[0].item() / count, acc1=100 * totals[1].item() / count,
                 acc5=100 * totals[2].item() / count, count=int(totals[3].item()))
    logger.info(f'* Acc@1 {stats["acc1"]:.3f} Acc@5 {stats["acc5"]:.3f} loss {stats["loss"]:.3f} '
                f'({stats["count"]} images)')
    return stats
