"""Train and evaluate HorNet image classifiers (ImageNet-1K/22K, CIFAR-100, demo digits).

Single process: ``python main.py --device cpu ...``; several: ``torchrun --nproc_per_node=N
main.py ...`` or ``python -m torch.distributed.launch --nproc_per_node=N main.py ...``; SLURM:
``run_with_submitit.py``. Flags and defaults follow the ConvNeXt/HorNet research code; see
TRAINING.md for the per-model recipes.
"""
import argparse
import contextlib
import datetime
import functools
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3

import calc_flops
import datasets
import models
import run_dir
import utils
from engine import evaluate, train_one_epoch
from optim_factory import Schedules, create_optimizer
from utils import TrainingError, str2bool

logger = logging.getLogger('hornet')
DEFAULT_NB_CLASSES = 1000
MODEL_KEY_DEFAULT = 'model|module'  # --model_key as the original: means the rule of models.unwrap_checkpoint
# line i: the ImageNet-22K class index of ImageNet-1K class i (the original release's mapping)
IN1K_TO_IN22K_MAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'in1k_to_in22k_map.txt')
# DDP's bucket-layout hint for mkldnn 1x1-conv gradients on CPU: a speed note, not a problem
warnings.filterwarnings('ignore', message='Grad strides do not match bucket view strides')


def compile_scope(v: Any) -> str:
    """``argparse`` type of ``--compile``: ``''`` (off), ``'model'`` (true/model) or ``'blocks'``."""
    s = str(v).strip().lower()
    if s in ('model', 'blocks'):
        return s
    try:
        return 'model' if str2bool(v) else ''
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f'expected false, true, model or blocks, got {v!r}') from None


def get_args_parser() -> argparse.ArgumentParser:
    """All flags (``add_help=False`` so launchers can use it as a parent parser)."""
    p = argparse.ArgumentParser('HorNet training and evaluation', add_help=False)
    p.add_argument('--batch_size', default=64, type=int, help='per-process batch size')
    p.add_argument('--epochs', default=300, type=int)
    p.add_argument('--update_freq', default=1, type=int, help='gradient accumulation steps')

    g = p.add_argument_group('model')
    g.add_argument('--model', default='hornet_tiny_gf', type=str, metavar='MODEL',
                   help='one of: ' + ', '.join(sorted(timm.list_models('hornet_*'))))
    g.add_argument('--drop_path', type=float, default=0.0, metavar='PCT', help='stochastic depth rate')
    g.add_argument('--input_size', default=224, type=int, help='image size')
    g.add_argument('--layer_scale_init_value', default=1e-6, type=float)
    g.add_argument('--depths', type=int, nargs=4, default=None, metavar='N',
                   help='(new) override blocks per stage, e.g. 1 1 3 1 for a small model')
    g.add_argument('--base_dim', type=int, default=None,
                   help='(new) override stage-0 width (stage i has base_dim * 2**i channels)')
    g.add_argument('--channels_last', type=str2bool, default=False, help='(new) NHWC memory format')
    g.add_argument('--keep_freed_memory', type=str2bool, default=True,
                   help='(new) --device cpu: keep freed CPU memory for reuse instead of returning it to the OS '
                        '(glibc mallopt): no page faults on every activation, 2-15%% faster steps')
    g.add_argument('--grad_ckpt', type=str2bool, default=False,
                   help='(new) gradient checkpointing of every block: recomputes activations in backward, '
                        'same gradients, far less activation memory (HorNet-B batch 16: -66%% in benchmarks/results)')
    g.add_argument('--compile', type=compile_scope, default='false', metavar='{false,true,model,blocks}',
                   help='(new) torch.compile: true/model = the whole model (one graph); blocks = each HorNet '
                        'block on its own (models.compile_blocks: same speed, a fraction of the compile time)')

    g = p.add_argument_group('EMA')
    g.add_argument('--model_ema', type=str2bool, default=False)
    g.add_argument('--model_ema_decay', type=float, default=0.9999)
    g.add_argument('--model_ema_force_cpu', type=str2bool, default=False)
    g.add_argument('--model_ema_eval', type=str2bool, default=False, help='evaluate the EMA model too')

    g = p.add_argument_group('optimizer')
    g.add_argument('--opt', default='adamw', type=str, metavar='OPTIMIZER')
    g.add_argument('--opt_eps', default=1e-8, type=float, metavar='EPSILON')
    g.add_argument('--opt_betas', default=None, type=float, nargs='+', metavar='BETA')
    g.add_argument('--clip_grad', type=float, default=None, metavar='NORM', help='max gradient norm')
    g.add_argument('--clip_grad_mode', default='micro', choices=('micro', 'step'),
                   help='(new) fp32 with --update_freq > 1: "micro" (the original) clips the gradient '
                        'accumulated so far after every micro-batch backward, and only when --clip_grad '
                        '> 0.1; "step" clips once per optimizer step on the full accumulated gradient '
                        '(when --clip_grad > 0). With --use_amp true both clip once per step')
    g.add_argument('--momentum', type=float, default=0.9, metavar='M')
    g.add_argument('--weight_decay', type=float, default=0.05)
    g.add_argument('--weight_decay_end', type=float, default=None,
                   help='final weight decay of the cosine schedule (default: constant)')
    g.add_argument('--lr', type=float, default=4e-3, metavar='LR')
    g.add_argument('--layer_decay', type=float, default=1.0)
    g.add_argument('--min_lr', type=float, default=1e-6, metavar='LR')
    g.add_argument('--warmup_epochs', type=int, default=20, metavar='N')
    g.add_argument('--warmup_steps', type=int, default=-1, metavar='N',
                   help='warmup optimizer steps; overrides --warmup_epochs when > 0')

    g = p.add_argument_group('augmentation')
    g.add_argument('--color_jitter', type=float, default=0.4, metavar='PCT')
    g.add_argument('--aa', type=str, default='rand-m9-mstd0.5-inc1', metavar='NAME',
                   help='timm auto-augment policy, or none')
    g.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    g.add_argument('--train_interpolation', type=str, default='bicubic')
    g.add_argument('--crop_pct', type=float, default=None)
    g.add_argument('--hflip', type=float, default=0.5, help='(new) horizontal flip probability')
    g.add_argument('--reprob', type=float, default=0.25, metavar='PCT', help='random erase prob')
    g.add_argument('--remode', type=str, default='pixel')
    g.add_argument('--recount', type=int, default=1)
    g.add_argument('--resplit', type=str2bool, default=False)
    g.add_argument('--mixup', type=float, default=0.8)
    g.add_argument('--cutmix', type=float, default=1.0)
    g.add_argument('--cutmix_minmax', type=float, nargs='+', default=None)
    g.add_argument('--mixup_prob', type=float, default=1.0)
    g.add_argument('--mixup_switch_prob', type=float, default=0.5)
    g.add_argument('--mixup_mode', type=str, default='batch', choices=('batch', 'pair', 'elem'))

    g = p.add_argument_group('fine-tuning')
    g.add_argument('--finetune', default='', help='checkpoint to start from')
    g.add_argument('--head_init_scale', default=1.0, type=float)
    g.add_argument('--model_key', default=MODEL_KEY_DEFAULT, type=str,
                   help='checkpoint entry with the weights, "|" between alternatives (default: model, module '
                        'or state_dict, else the whole file)')
    g.add_argument('--model_prefix', default='', type=str)
    g.add_argument('--head_map', default='', type=str,
                   help='(new) text file, one checkpoint class index per line and model class, used '
                        'to map a checkpoint head to the model\'s classes; "drop" starts the head fresh. '
                        'Default: a 21841-class head going to 1000 classes uses the shipped '
                        'data/in1k_to_in22k_map.txt, as the original')

    g = p.add_argument_group('data')
    g.add_argument('--data_path', default='/datasets01/imagenet_full_size/061417/', type=str)
    g.add_argument('--eval_data_path', default=None, type=str)
    g.add_argument('--nb_classes', default=None, type=int,
                   help='number of classes (default: 1000; with --data_set image_folder: the number '
                        'of class folders)')
    g.add_argument('--imagenet_default_mean_and_std', type=str2bool, default=True)
    g.add_argument('--data_set', default='IMNET', type=datasets.data_set_name, metavar='NAME',
                   help=f'{", ".join(datasets.DATA_SETS)}; or (new) a timm data set: "folder" (a folder or '
                        '.tar), wds/NAME (WebDataset shards in --data_path), hfds/NAME or hfids/NAME (Hugging '
                        'Face hub name or local folder; --data_path is the cache)')
    g.add_argument('--train_split', default='train', help='(new) timm data sets: training split')
    g.add_argument('--val_split', default='validation', help='(new) timm data sets: evaluation split')
    g.add_argument('--class_map', default='', help='(new) timm data sets: .txt file, one class name per line')
    g.add_argument('--train_num_samples', default=0, type=int,
                   help='(new) streams: samples per epoch when the shards carry no _info.json (0: from it)')
    g.add_argument('--val_num_samples', default=0, type=int, help='(new) streams: evaluation samples (0: from info)')
    g.add_argument('--dataset_download', type=str2bool, default=False,
                   help='(new) let timm download torch/ and hfids/ data sets')
    g.add_argument('--num_workers', default=10, type=int)
    g.add_argument('--pin_mem', type=str2bool, default=True)

    g = p.add_argument_group('run')
    g.add_argument('--output_dir', default='', help='checkpoints, log.txt, TensorBoard events')
    g.add_argument('--log_dir', default=None, help='TensorBoard folder (default: --output_dir)')
    g.add_argument('--device', default='cuda', help='cuda or cpu')
    g.add_argument('--seed', default=0, type=int)
    g.add_argument('--resume', default='', help='checkpoint to resume from (or evaluate)')
    g.add_argument('--auto_resume', type=str2bool, default=True)
    g.add_argument('--overwrite', type=str2bool, default=False,
                   help='(new) start over in an --output_dir that holds another run\'s checkpoints/log.txt, '
                        'deleting them (without it such a run is refused)')
    g.add_argument('--save_ckpt', type=str2bool, default=True)
    g.add_argument('--save_ckpt_freq', default=1, type=int)
    g.add_argument('--save_ckpt_num', default=3, type=int)
    g.add_argument('--save_every_minutes', default=30.0, type=float, metavar='M',
                   help='(new) also write a step checkpoint (checkpoint-step.pth) every M minutes inside an '
                        'epoch, so a kill -9 loses at most M minutes (0: off; a stop request always saves one)')
    g.add_argument('--save_safetensors', type=str2bool, default=False,
                   help='(new) when training ends, also write the best weights (the EMA\'s, when --model_ema_eval '
                        'found them better) as model.safetensors in --output_dir, for timm/export/predict')
    g.add_argument('--start_epoch', default=0, type=int, metavar='N')
    g.add_argument('--eval', type=str2bool, default=False, help='only evaluate --resume')
    g.add_argument('--dist_eval', type=str2bool, default=True)
    g.add_argument('--disable_eval', type=str2bool, default=False)
    g.add_argument('--use_amp', type=str2bool, default=False)
    g.add_argument('--amp_dtype', default='fp16', choices=('fp16', 'bf16'),
                   help='(new) autocast dtype with --use_amp true; fp16 uses a gradient scaler')
    g.add_argument('--tf32', type=str2bool, default=True,
                   help='(new) CUDA: fp32 matmuls and convs in TF32 (as cuDNN ran the original\'s convs); false: '
                        'full fp32 (slower, bit-closer to the CPU)')
    g.add_argument('--print_freq', default=10, type=int, help='(new) progress line every N batches')
    g.add_argument('--max_batches_per_epoch', default=0, type=int,
                   help='(new) cap batches per epoch (0: all); for smoke tests')
    g.add_argument('--run_epochs', default=0, type=int,
                   help='(new) stop after this many epochs in this run (0: until --epochs); '
                        'resume later with --auto_resume, e.g. inside a time-limited job')

    g = p.add_argument_group('distributed')
    g.add_argument('--world_size', default=1, type=int)
    g.add_argument('--local_rank', '--local-rank', default=-1, type=int, dest='local_rank')
    g.add_argument('--dist_on_itp', type=str2bool, default=False)
    g.add_argument('--dist_url', default='env://')
    g.add_argument('--dist_backend', default=None, choices=('nccl', 'gloo'),
                   help='(new) process-group backend (default: nccl on CUDA, gloo on CPU); gloo on CUDA lets '
                        'several processes share one GPU, e.g. to test a multi-process run on one card')

    g = p.add_argument_group('Weights & Biases')
    g.add_argument('--enable_wandb', type=str2bool, default=False)
    g.add_argument('--project', default='hornet', type=str)
    g.add_argument('--wandb_ckpt', type=str2bool, default=False)
    g.add_argument('--exp_name', default='', type=str)
    return p


def _repair_argv(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """Undo two shell slips found in copied commands: a value glued to the next flag by
    ``5\\<newline>--batch_size`` and the lone ``' '`` word left by ``\\ <newline>``."""
    known = {s for a in parser._actions for s in a.option_strings}
    out = []
    for tok in argv:
        if tok.strip() == '':
            continue
        m = re.match(r'^(.*?[^-])(--[A-Za-z][\w-]*)$', tok)
        if m and not tok.startswith('-') and m.group(2) in known:
            out.extend([m.group(1), m.group(2)])
            continue
        out.append(tok)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default: ``sys.argv[1:]``) with :func:`get_args_parser`."""
    parser = utils.OneLineArgumentParser('HorNet training and evaluation', parents=[get_args_parser()])
    argv = sys.argv[1:] if argv is None else list(argv)
    return parser.parse_args(_repair_argv(argv, parser))


# ----------------------------------------------------------------------------- building blocks

def check_model_name(name: str) -> None:
    """An unknown ``--model`` is an error that lists the valid names."""
    valid = sorted(timm.list_models('hornet_*'))
    if name not in valid:
        raise TrainingError(f'unknown --model {name!r}; valid models: {", ".join(valid)}')


def build_model(args: argparse.Namespace, num_classes: int | None = None) -> torch.nn.Module:
    """The ``--model`` network with the drop-path, layer-scale, head-init and size overrides."""
    check_model_name(args.model)
    if num_classes is None:
        num_classes = DEFAULT_NB_CLASSES if args.nb_classes is None else args.nb_classes
    kwargs = dict(num_classes=num_classes,
                  drop_path_rate=args.drop_path, layer_scale_init_value=args.layer_scale_init_value,
                  head_init_scale=args.head_init_scale)
    if args.depths is not None:
        kwargs['depths'] = tuple(args.depths)
    if args.base_dim is not None:
        kwargs['base_dim'] = args.base_dim
    model = timm.create_model(args.model, pretrained=False, **kwargs)
    model.set_grad_checkpointing(args.grad_ckpt)
    return model


def _read_head_map(path: str, num_classes: int, ckpt_classes: int) -> torch.Tensor:
    try:
        with open(path, encoding='utf-8') as f:
            idx = [int(line.split('#')[0]) for line in f if line.split('#')[0].strip()]
    except (OSError, ValueError) as e:
        raise TrainingError(f'--head_map {path}: cannot read one integer per line ({e})') from None
    if len(idx) != num_classes:
        raise TrainingError(f'--head_map {path} has {len(idx)} entries, the model has {num_classes} classes')
    if min(idx) < 0 or max(idx) >= ckpt_classes:
        raise TrainingError(f'--head_map {path}: indices must lie in [0, {ckpt_classes}) '
                            f'(checkpoint classes), found {min(idx)}..{max(idx)}')
    return torch.tensor(idx, dtype=torch.long)


def load_finetune(args: argparse.Namespace, model: torch.nn.Module, classes: Sequence[str] | None = None) -> None:
    """Initialise ``model`` from ``--finetune`` (``--model_key``, ``--model_prefix``, ``--head_map``).

    GF filters are resized to the model; a head with another class count is dropped, or mapped
    row by row with ``--head_map``. A 21841-class head going to 1000 classes is mapped with the
    shipped ImageNet-1K -> 22K index file (as the original) unless ``--head_map`` says otherwise.
    A head that is kept must have been trained on ``classes`` (the training data's) when the
    checkpoint names its classes.
    """
    ckpt = run_dir.load_file(args.finetune)
    ckpt_names = run_dir.label_names(ckpt)
    # --model_key's default is the rule of models.unwrap_checkpoint (model, module, state_dict, or
    # a bare state dict); another value names the entry (e.g. model_ema), '|' between alternatives
    key = None if args.model_key == MODEL_KEY_DEFAULT else args.model_key
    state = models.state_dict.weights_in(ckpt, args.finetune, key=key, prefix=args.model_prefix)
    logger.info(f'fine-tuning from {args.finetune}' + (f' [{args.model_key}]' if key else ''))
    head = model.get_classifier()
    if 'head.weight' in state and isinstance(head, torch.nn.Linear):
        ckpt_classes, n = state['head.weight'].shape[0], head.out_features
        head_map = args.head_map
        if not head_map and ckpt_classes == 21841 and n == 1000:
            head_map = IN1K_TO_IN22K_MAP
        if head_map and head_map != 'drop':
            rows = _read_head_map(head_map, n, ckpt_classes)
            state['head.weight'] = state['head.weight'][rows]
            if 'head.bias' in state:
                state['head.bias'] = state['head.bias'][rows]
            logger.info(f'mapped the {ckpt_classes}-class head to {n} classes with {head_map}')
        elif ckpt_classes != n or head_map == 'drop':
            logger.info(f'dropping the {ckpt_classes}-class head of {args.finetune} ({n} classes now)')
            state.pop('head.weight')
            state.pop('head.bias', None)
        elif classes is not None and ckpt_names is not None:  # the head is kept: its labels must agree
            try:
                datasets.check_same_classes(classes, ckpt_names, 'the training data', f'--finetune {args.finetune}')
            except TrainingError as e:
                raise TrainingError(f'{e} (or pass --head_map drop to start the head fresh)') from None
    state = models.checkpoint_filter_fn(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        logger.info(f'fresh parameters: {", ".join(missing)}')


def model_gflops(args: argparse.Namespace) -> float:
    """GFLOPs of one ``--input_size`` image through the ``--model`` network, logged in log.txt as
    ``GFLOPs`` as the original. Counted on a second build on the meta device (shapes only: nothing
    is allocated or computed), so the real model never runs a forward for it."""
    with torch.device('meta'):
        model = build_model(args)
    return calc_flops.count_flops(model, (args.input_size, args.input_size))['total'] / 1e9


def build_training_parts(args: argparse.Namespace, num_classes: int) -> tuple[Mixup | None, torch.nn.Module]:
    """Mixup/CutMix (when enabled) and the matching loss."""
    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=num_classes)
        criterion: torch.nn.Module = SoftTargetCrossEntropy()
    elif args.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    return mixup_fn, criterion


def amp_dtype_of(args: argparse.Namespace) -> torch.dtype | None:
    if not args.use_amp:
        return None
    return torch.float16 if args.amp_dtype == 'fp16' else torch.bfloat16


def load_resume(args: argparse.Namespace, path: str, model: torch.nn.Module, optimizer=None, loss_scaler=None,
                model_ema: ModelEmaV3 | None = None, classes: Sequence[str] | None = None) -> run_dir.ResumeState:
    """Load checkpoint ``path`` into the model (strictly), and unless ``--eval``, the optimizer,
    scaler and EMA. Returns the epoch to continue at and the best accuracies (``args`` is not
    changed); a checkpoint without training state continues at ``--start_epoch``. A checkpoint
    that names its classes must name ``classes`` (the training data's), in order."""
    def model_state(ckpt: dict) -> dict[str, torch.Tensor]:
        ckpt_names = run_dir.label_names(ckpt)
        if classes is not None and ckpt_names is not None:
            datasets.check_same_classes(classes, ckpt_names, 'the training data', f'checkpoint {path}')
        state = models.unwrap_checkpoint(ckpt)
        if any(k.startswith('backbone.') for k in state):  # mmpretrain layout
            state = models.checkpoint_filter_fn(state, model)
        models.check_state_dict(state, model, what=f'checkpoint {path}')
        return state
    state = run_dir.resume(path, model, optimizer, loss_scaler, model_ema, load_training_state=not args.eval,
                              prepare_state=model_state, current_args=utils.plain_args(args),
                              start_epoch=args.start_epoch)
    logger.info(f'resumed model weights from {path}')
    if state.training_state:
        logger.info(f'resumed optimizer state; continuing at epoch {state.start_epoch}')
    return state


def training_state(args: argparse.Namespace, epoch: int, model: torch.nn.Module, optimizer, loss_scaler,
                   model_ema: ModelEmaV3 | None, best: dict[str, float], label_names: Sequence[str] | None = None
                   ) -> dict:
    """What ``checkpoint-*.pth`` holds: everything a rerun needs to continue bit for bit, and the
    class list (``label_names``) the model was trained with, when the data names its classes."""
    ckpt = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch,
                scaler=loss_scaler.state_dict(), args=utils.plain_args(args), **best)
    if label_names is not None:
        ckpt[run_dir.LABEL_NAMES] = list(label_names)
    if model_ema is not None:
        ckpt['model_ema'] = model_ema.module.state_dict()
    return ckpt


def save_checkpoints(manager: run_dir.CheckpointManager, names: Sequence[str], *state_args: Any,
                     **state_kwargs: Any) -> None:
    """Write ``checkpoint-<name>.pth`` for each name, all holding :func:`training_state`."""
    state = training_state(*state_args, **state_kwargs)
    for name in names:
        manager.save(name, state)


@dataclass
class StepPosition:
    """Where a resumed run continues inside ``epoch``: after ``batch`` batches of this run's shape."""
    epoch: int
    batch: int
    metrics: dict[str, Any] | None = None  # this rank's running statistics of the epoch
    rng: dict[str, Any] | None = None  # this rank's random states


def step_position(args: argparse.Namespace, ckpt: dict[str, Any] | None, path: str, rank: int, world_size: int,
                  num_batches: int) -> StepPosition | None:
    """The position a step checkpoint (``ckpt``) was saved at, for this run's launch shape, or None for an
    epoch-end checkpoint. The position is the global sample offset (samples trained in the epoch, over
    all ranks); another world size, batch size or ``--update_freq`` continues at the same sample.

    Raises:
        TrainingError: that sample is not at an optimizer-step boundary of this run's shape.
    """
    step = ckpt.get(run_dir.STEP_KEY) if ckpt is not None else None
    if not isinstance(step, dict):
        return None
    epoch, samples = int(step['epoch']), int(step['samples'])
    per_rank = datasets.rank_offset(samples, world_size)
    per_step = args.batch_size * args.update_freq
    if per_rank is None or per_rank % per_step:
        raise TrainingError(
            f'{path} stopped after {samples} samples of epoch {epoch}, which is not a whole number of optimizer '
            f'steps of {per_step * world_size} samples ({args.batch_size} per process x {args.update_freq} '
            f'accumulation x {world_size} processes); rerun with the saved shape (--batch_size {step["batch_size"]} '
            f'--update_freq {step["update_freq"]} on {step["world_size"]} processes), or remove {path} to '
            'restart that epoch from the previous checkpoint')
    batch = per_rank // args.batch_size
    if batch > num_batches:
        raise TrainingError(f'{path} stopped after batch {step["batch"]} of epoch {epoch}, past the '
                            f'{num_batches} batches per epoch; rerun with the saved settings, or remove {path}')
    if int(step.get('seed', args.seed)) != args.seed:
        logger.warning(f'{path} was trained with --seed {step["seed"]}, this run uses --seed {args.seed}: the '
                       f'rest of epoch {epoch} is a different sample order (some samples seen twice)')
    ranks = step.get('ranks') or []
    same_shape = len(ranks) == world_size and batch == int(step['batch'])
    if not same_shape:
        logger.warning(f'{path} was saved by {step["world_size"]} processes x batch {step["batch_size"]} x '
                       f'{step["update_freq"]} accumulation: continuing at sample {samples} of epoch {epoch} '
                       '(the same samples, not bit for bit the same training)')
    mine = ranks[rank] if same_shape else {}
    logger.info(f'continuing epoch {epoch} at batch {batch} (sample {samples} of the epoch) from the step '
                f'checkpoint {path}')
    return StepPosition(epoch, batch, mine.get('metrics'), mine.get('rng'))


class StepCheckpointer:
    """Step checkpoints (:data:`run_dir.STEP_NAME`) at optimizer-step boundaries: when a stop is
    requested (Ctrl-C, SIGTERM, submitit's preemption signal, all deferred to the boundary), then the
    run stops; and every ``--save_every_minutes``. All ranks decide together (one small all-reduce on a
    CPU group per optimizer step), so they save at the same step; rank 0 keeps the time. Streams
    (``enabled`` false) write none: a stop still waits for the step boundary, and the rerun repeats
    the epoch from its start.

    The file holds :func:`training_state` (``epoch`` = the last finished epoch) plus a ``step`` entry:
    the epoch it stopped in, batches done, global optimizer step, samples of the epoch over all ranks,
    the launch shape and seed, and each rank's random states and running metrics.
    """

    def __init__(self, args: argparse.Namespace, manager: run_dir.CheckpointManager | None,
                 steps_per_epoch: int, state: Callable[[int], dict], enabled: bool = True):
        self.args, self.manager, self.steps_per_epoch, self.state = args, manager, steps_per_epoch, state
        self.enabled = enabled and manager is not None and args.save_ckpt
        self.every = max(args.save_every_minutes, 0.0) * 60
        self.last = time.monotonic()
        self.group = None
        if utils.is_dist_avail_and_initialized():  # the flags travel on the CPU: no GPU sync per step
            backend = torch.distributed.get_backend()
            self.group = torch.distributed.new_group(backend='gloo') if backend != 'gloo' else None

    def saved(self) -> None:
        """A checkpoint was written: the time to the next one starts now."""
        self.last = time.monotonic()

    def _decide(self) -> tuple[bool, bool]:
        stop = utils.stop_pending()
        due = self.every > 0 and utils.is_main_process() and time.monotonic() - self.last >= self.every
        if utils.is_dist_avail_and_initialized():
            flags = torch.tensor([int(stop), int(due)], dtype=torch.int32)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX, group=self.group)
            stop, due = bool(flags[0]), bool(flags[1])
        return stop, due

    def on_step(self, epoch: int, batches_done: int, read_metrics: Callable[[], utils.MetricLogger]) -> None:
        """After an optimizer step: save when a stop is requested or the time is up; then stop if asked.
        ``read_metrics`` gives the epoch's running metrics up to this step (read from the device only here)."""
        stop, due = self._decide()
        if (stop or due) and self.enabled:
            self.save(epoch, batches_done, read_metrics())
        if stop:
            # raises the stop (KeyboardInterrupt, Terminated, submitit's exit on rank 0); a rank whose
            # handler returns (submitit's on other ranks) or that got no signal trains on as before,
            # until its launcher stops it
            utils.handle_pending_signals()

    def save(self, epoch: int, batches_done: int, metric_logger: utils.MetricLogger) -> None:
        args, world_size = self.args, utils.get_world_size()
        mine = dict(rng=utils.rng_states(), metrics=metric_logger.state_dict())
        ranks = [None] * world_size
        if utils.is_dist_avail_and_initialized():
            torch.distributed.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        position = dict(epoch=epoch, batch=batches_done,
                        global_step=epoch * self.steps_per_epoch + batches_done // args.update_freq,
                        samples=batches_done * args.batch_size * world_size, world_size=world_size,
                        batch_size=args.batch_size, update_freq=args.update_freq, seed=args.seed,
                        steps_per_epoch=self.steps_per_epoch, ranks=ranks)

        def write() -> str:
            state = self.state(epoch - 1)
            state[run_dir.STEP_KEY] = position
            return self.manager.save_step(state)
        with utils.signals_held():
            path = on_main(write)
        logger.info(f'saved {path} (epoch {epoch}, batch {batches_done}, step {position["global_step"]})')
        self.saved()


def _seed_batch(seed: int, rank: int, epoch: int, batch: int) -> None:
    """Seed the main process before a batch: mixup/cutmix and drop path depend on (seed, rank, epoch,
    batch), not on what ran before (the data set's per-sample seeding, a resume)."""
    utils.seed_everything(utils.seed_for(seed, rank, epoch, batch))


def resume_inside_epoch(position: StepPosition, sampler: datasets.ResumableSampler,
                        metric_logger: utils.MetricLogger, batch_size: int) -> int:
    """Set up the resumed epoch: the sampler skips the trained batches (never read), the running
    metrics and random states are this rank's saved ones. Returns the first batch to train."""
    sampler.skip(position.batch * batch_size)
    if position.metrics:
        metric_logger.load_state_dict(position.metrics)
    if position.rng:
        utils.set_rng_states(position.rng)
    return position.batch


def save_final_weights(output_dir: str, model: torch.nn.Module, model_ema: ModelEmaV3 | None,
                       best: dict[str, float], label_names: Sequence[str] | None, ranked: bool,
                       imagenet_default_mean_and_std: bool = True) -> str:
    """``model.safetensors`` in ``output_dir``: the weights of the best checkpoint when checkpoints
    were ranked (``ranked``), those of the EMA when its best accuracy is higher, else the final
    weights; which one, its accuracy, the class names and the mean/std flag (which export.py and
    predict.py preprocess with) go into the file's metadata."""
    state, source, acc = model.state_dict(), 'final weights', None
    if ranked:
        use_ema = model_ema is not None and best['max_accuracy_ema'] > best['max_accuracy']
        name, key = ('checkpoint-best-ema.pth', 'model_ema') if use_ema else ('checkpoint-best.pth', 'model')
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            state, source = run_dir.load_file(path)[key], f'{key} of {name}'
            acc = best['max_accuracy_ema' if use_ema else 'max_accuracy']
    metadata = {'source': source, 'imagenet_default_mean_and_std': str(bool(imagenet_default_mean_and_std)).lower()}
    if acc is not None:
        metadata['acc1'] = f'{acc:.4f}'
    if label_names is not None:
        metadata[run_dir.LABEL_NAMES] = json.dumps(list(label_names))
    out = os.path.join(output_dir, run_dir.WEIGHTS_NAME)
    run_dir.save_safetensors(state, out, metadata)
    logger.info(f'wrote {out} ({source})')
    return out


def on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only; every rank gets its result, or raises its user error (so a
    refused output dir or a failed save stops all ranks, not only rank 0)."""
    result, message = None, None
    if utils.is_main_process():
        try:
            result = fn()
        except (TrainingError, OSError) as e:
            if not utils.is_dist_avail_and_initialized():
                raise
            message = str(e)
    if utils.is_dist_avail_and_initialized():
        box = [result, message]
        torch.distributed.broadcast_object_list(box, src=0)
        result, message = box
    if message is not None:
        raise TrainingError(message)
    return result


def _require_finite(epoch: int, model: torch.nn.Module, stats: dict[str, float] | None = None,
                    what: str = 'model') -> None:
    """A diverged model is never logged, ranked or saved: stop with the last good checkpoint intact."""
    bad, total = models.state_dict.non_finite_count(model.state_dict())
    if bad:
        raise TrainingError(f'the {what} diverged at epoch {epoch}: {bad} of {total} weights are NaN or inf; '
                            'nothing of this epoch was saved, the last good checkpoint in --output_dir is intact '
                            '(lower --lr or set --clip_grad, then rerun)')
    if stats is not None and not all(math.isfinite(v) for v in stats.values()):
        raise TrainingError(f'evaluating the {what} at epoch {epoch} gave non-finite results ({stats}): its '
                            'outputs are NaN or inf; nothing of this epoch was saved, the last good checkpoint '
                            'in --output_dir is intact')


def validate_args(args: argparse.Namespace) -> None:
    """Flag values that cannot work, found at start-up instead of at the first save or batch."""
    at_least = dict(batch_size=1, epochs=1, update_freq=1, print_freq=1, save_ckpt_freq=1, nb_classes=1,
                    num_workers=0, save_ckpt_num=0, run_epochs=0, max_batches_per_epoch=0, start_epoch=0,
                    warmup_epochs=0)
    for name, low in at_least.items():
        value = getattr(args, name, low)
        if value is None and name == 'nb_classes':
            continue  # taken from the data set (or 1000)
        if value is None or value < low:
            raise TrainingError(f'--{name} must be >= {low}, got {value}')
    in_range = dict(drop_path=(0.0, 1.0), smoothing=(0.0, 1.0), reprob=(0.0, 1.0), mixup_prob=(0.0, 1.0),
                    hflip=(0.0, 1.0), model_ema_decay=(0.0, 1.0))
    for name, (low, high) in in_range.items():
        value = getattr(args, name, low)
        if value is not None and not low <= value <= high:
            raise TrainingError(f'--{name} must lie in [{low}, {high}], got {value}')
    for name in ('lr', 'min_lr', 'weight_decay', 'mixup', 'cutmix', 'color_jitter', 'save_every_minutes'):
        value = getattr(args, name, 0.0)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise TrainingError(f'--{name} must be a finite number >= 0, got {value}')
    stride = models.MIN_INPUT_SIZE  # the network's total stride
    if args.input_size < stride:
        raise TrainingError(f'--input_size {args.input_size} is too small for {args.model}: its stages '
                            f'downsample {stride}x, so the input must be at least {stride} pixels')


def _eval_checkpoint(args: argparse.Namespace) -> str:
    """``--eval true`` scores ``--resume``, else the newest checkpoint in ``--output_dir``."""
    if args.resume:
        return args.resume
    found = run_dir.find_latest(args.output_dir) if args.output_dir else None
    if found is None:
        where = f'--output_dir {args.output_dir} holds no checkpoint' if args.output_dir else 'no --output_dir'
        raise TrainingError(f'--eval true needs weights to evaluate, but no --resume was given and {where}; '
                            'pass --resume FILE')
    logger.info(f'evaluating {found[0]} (epoch {found[1]}), the newest checkpoint in --output_dir')
    return found[0]


def _device_of(model: torch.nn.Module) -> torch.device:
    """Where a model's weights live (the EMA copy may sit on the CPU: --model_ema_force_cpu)."""
    return next(model.parameters()).device


def _check_device(args: argparse.Namespace) -> torch.device:
    device = torch.device(args.device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise TrainingError(f'--device {args.device} but no CUDA device is available; pass --device cpu')
        # speed only: the input shapes repeat (fixed crops), so cuDNN's per-shape kernel search pays
        # off after the first step; as in the original release's training script
        torch.backends.cudnn.benchmark = True
        # fp32 products in TF32 (--tf32, default on): the original's 1x1 convs ran through cuDNN, which
        # uses TF32; ours are F.linear (cuBLAS), whose TF32 switch PyTorch leaves off
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    return device


def _loader(dataset, sampler, args, batch_size: int, drop_last: bool, device: torch.device):
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=batch_size, num_workers=args.num_workers,
        pin_memory=args.pin_mem and device.type == 'cuda', drop_last=drop_last)


# ----------------------------------------------------------------------------- the steps of a run

@dataclass
class RunSetup:
    """Where this process runs and which checkpoint it starts from (:func:`setup_run`)."""
    device: torch.device
    rank: int
    world_size: int
    amp_dtype: torch.dtype | None
    resume_path: str  # the checkpoint to resume, or with --eval to score; '' for none
    manager: run_dir.CheckpointManager | None  # the locked --output_dir of a training run


@dataclass
class RunData:
    """The data of a run (:func:`build_data`)."""
    train: torch.utils.data.Dataset | None  # None with --eval
    val_loader: torch.utils.data.DataLoader | None  # None with --disable_eval
    dist_eval: bool  # the evaluation's counts are summed over the ranks
    train_classes: Sequence[str] | None  # the class names this run's checkpoints record (None with --eval)


@dataclass
class RunModel:
    """The network of a run (:func:`build_model_and_ema`)."""
    model: torch.nn.Module  # what trains and evaluates: compiled with --compile model, in DDP for training
    model_without_ddp: torch.nn.Module  # the plain module, whose state dict the checkpoints hold
    model_ema: ModelEmaV3 | None
    n_parameters: int
    gflops: float


@dataclass
class TrainLoader:
    """The training batches of each epoch (:func:`build_train_loader`)."""
    sampler: datasets.ResumableSampler | None  # None for a stream, which shards itself
    loader: torch.utils.data.DataLoader
    num_batches: int  # batches trained per epoch
    steps_per_epoch: int  # optimizer steps per epoch


@dataclass
class Optimization:
    """How the weights are updated (:func:`build_optimizer_and_schedules`)."""
    optimizer: torch.optim.Optimizer
    loss_scaler: utils.LossScaler
    schedules: Schedules
    mixup_fn: Mixup | None
    criterion: torch.nn.Module


@dataclass
class Start:
    """Where training starts (:func:`resume_or_start`)."""
    epoch: int  # the first epoch to train
    best: dict[str, float]  # the best accuracies so far; updated in place as training goes on
    position: StepPosition | None  # a place inside ``epoch``, from a mid-epoch checkpoint


def setup_run(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> RunSetup:
    """Distributed init, logging, device, flag checks, seeds, and the locked output folder."""
    utils.init_distributed_mode(args)
    utils.setup_logging()
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # the shell started us in the background (`cmd &`, `nohup cmd &`) and asked that the
        # terminal's Ctrl-C not reach us: keep it so; SIGTERM still stops the run cleanly
        logger.info('SIGINT is ignored (started as a background job): Ctrl-C does not stop this run; '
                    '`kill PID` (SIGTERM) stops it at the next step boundary (exit 143, rerun to resume)')
    device = _check_device(args)
    if device.type == 'cpu' and args.keep_freed_memory and utils.keep_freed_cpu_memory():
        logger.info('CPU allocator: freed memory is kept for reuse (--keep_freed_memory)')
    rank, world_size = utils.get_rank(), utils.get_world_size()
    check_model_name(args.model)
    validate_args(args)
    utils.seed_everything(args.seed + rank)
    resume_path, manager = '', None
    if args.eval:
        resume_path = _eval_checkpoint(args)
    elif args.output_dir:
        # lock the folder (a second live run is refused), clean temp files of killed saves and
        # pick the newest checkpoint; refuses to start over another run's results
        manager = run_dir.CheckpointManager(args.output_dir, keep=args.save_ckpt_num)
        cleanup.callback(manager.close)
        resume_path = on_main(lambda: manager.open(args.resume, args.auto_resume, args.overwrite,
                                                   keep_files=[args.finetune]))
    if not args.eval and args.log_dir:
        on_main(lambda: run_dir.check_writable(args.log_dir, '--log_dir'))
    return RunSetup(device, rank, world_size, amp_dtype_of(args), resume_path, manager)


def build_data(args: argparse.Namespace, run: RunSetup) -> RunData:
    """The training set and the evaluation loader, their labels naming the same classes (sets --nb_classes)."""
    # rank 0 exports/caches the data; the others wait in on_main's broadcast and, if rank 0 refuses
    # (e.g. a --data_path DEMO did not create), stop with its message instead of hanging at a barrier
    on_main(lambda: datasets.prepare_data(args))
    # labels mean the same everywhere: the evaluation data must name the model's classes (the
    # training data's, or with --eval the checkpoint's), in the same order
    dataset_train, classes, classes_from = None, None, 'the model'
    if not args.eval:
        dataset_train, nb_classes = datasets.build_dataset(True, args)
        args.nb_classes = nb_classes
        classes, classes_from = datasets.class_names(dataset_train), 'the training data'
    elif run.resume_path:
        # mapped, not read: only its class names and normalisation are needed before load_resume reads the weights
        ckpt = run_dir.load_file(run.resume_path, mmap=True)
        trained_mean_std = run_dir.imagenet_mean_and_std(run_dir.saved_args(ckpt))
        if trained_mean_std != args.imagenet_default_mean_and_std:
            # one preprocessing for evaluation: predict.py and export.py take the checkpoint's
            flag = str(trained_mean_std).lower()
            raise TrainingError(f'{run.resume_path} was trained with --imagenet_default_mean_and_std {flag}; '
                                f'evaluate it with the same normalisation: pass --imagenet_default_mean_and_std {flag}')
        classes, classes_from = run_dir.label_names(ckpt), f'checkpoint {run.resume_path}'
        del ckpt
    dataset_val = None
    if args.eval or not args.disable_eval:
        dataset_val, nb_classes = datasets.build_dataset(False, args, classes, classes_from)
        args.nb_classes = nb_classes

    val_loader = None
    if dataset_val is not None:
        if datasets.is_stream(dataset_val):
            val_sampler = None  # shards itself by rank and loader worker
        elif args.distributed and args.dist_eval:
            val_sampler = datasets.ShardedEvalSampler(dataset_val, run.world_size, run.rank)
        else:
            val_sampler = torch.utils.data.SequentialSampler(dataset_val)
        val_loader = _loader(dataset_val, val_sampler, args, int(1.5 * args.batch_size), False, run.device)
    # a stream is split over the ranks whatever --dist_eval says, so its counts are always summed
    dist_eval = args.distributed and (args.dist_eval or datasets.is_stream(dataset_val))
    return RunData(dataset_train, val_loader, dist_eval, classes if not args.eval else None)


def build_model_and_ema(args: argparse.Namespace, run: RunSetup, data: RunData) -> RunModel:
    """The model (with its --finetune weights) on the device, its EMA copy, and --compile."""
    model = build_model(args)
    if args.finetune:
        load_finetune(args, model, data.train_classes)
    model.to(run.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay,
                               device=torch.device('cpu') if args.model_ema_force_cpu else None)
    model_without_ddp = model
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    gflops = model_gflops(args)
    logger.info(f'model {args.model}: {n_parameters:,} parameters, {args.nb_classes} classes, '
                f'{gflops:.2f} GFLOPs at {args.input_size}x{args.input_size}')

    # static shapes: a new batch size (the last evaluation batch) compiles one more graph. With
    # symbolic sizes, which a second size in the process brings about, torch 2.14's inductor
    # fails on HorNet's training graph ("cannot determine truth value of Relational" in its
    # stride sorting; pytorch issues 172204, 185510)
    if args.compile == 'model':  # also for --eval; the weights loaded later are the wrapped module's
        logger.info('torch.compile: the first steps compile the model (HorNet-T on a 2-core CPU: about '
                    '1 minute for --eval, 2 for training; the evaluation after each epoch runs uncompiled)')
        model = torch.compile(model, dynamic=False)
    elif args.compile == 'blocks':  # in place: the EMA copy above stays eager, the state dict unchanged
        models.compile_blocks(model_without_ddp)
        logger.info('torch.compile: the first steps compile each kind of HorNet block, once for training and '
                    'once per evaluation batch size (HorNet-T GF on a 2-core CPU: about 1 minute for training)')
    return RunModel(model, model_without_ddp, model_ema, n_parameters, gflops)


def evaluate_only(args: argparse.Namespace, run: RunSetup, data: RunData, net: RunModel) -> dict[str, float]:
    """``--eval true``: the checkpoint's (and its EMA weights') numbers on the evaluation data."""
    resume_path, model_ema, amp_dtype = run.resume_path, net.model_ema, run.amp_dtype
    loaded = load_resume(args, resume_path, net.model_without_ddp, model_ema=model_ema)
    result = evaluate(data.val_loader, net.model, run.device, amp_dtype, data.dist_eval)
    _require_finite(0, net.model, result, what=f'checkpoint {resume_path}')
    stats = {f'test_{k}': v for k, v in result.items()}
    if model_ema is not None and args.model_ema_eval and not loaded.has_ema:
        # an EMA started at the loaded weights would only repeat the model's numbers under 'EMA'
        logger.warning(f'{resume_path} holds no EMA weights (its run did not use --model_ema true): '
                       'no EMA evaluation')
    elif model_ema is not None and args.model_ema_eval:
        ema = evaluate(data.val_loader, model_ema.module, _device_of(model_ema.module), amp_dtype, data.dist_eval,
                       header='Test (EMA):')
        _require_finite(0, model_ema.module, ema, what=f'EMA weights of {resume_path}')
        stats.update({f'test_{k}_ema': v for k, v in ema.items()})
    return stats


def build_train_loader(args: argparse.Namespace, run: RunSetup, dataset_train: torch.utils.data.Dataset
                       ) -> TrainLoader:
    """The training loader and its batch and step counts; refuses data too small for one step."""
    world_size = run.world_size
    shares = 1 if datasets.is_stream(dataset_train) else world_size  # a stream's length is this process's share
    if len(dataset_train) < args.batch_size * shares:
        what = 'this process\'s share of the training set has' if shares < world_size else 'the training set has'
        raise TrainingError(f'{what} {len(dataset_train)} images, fewer than one batch ({args.batch_size} x '
                            f'{shares} processes); lower --batch_size')
    train_sampler = datasets.build_train_sampler(dataset_train, world_size, run.rank, args.seed)
    # random-access data: a sample's augmentation depends on (seed, epoch, index) only (exact mid-epoch resume)
    train_data = dataset_train if train_sampler is None else datasets.SampleSeeded(dataset_train, args.seed)
    train_loader = _loader(train_data, train_sampler, args, args.batch_size, True, run.device)
    num_batches = len(train_loader)
    if args.max_batches_per_epoch > 0:
        num_batches = min(num_batches, args.max_batches_per_epoch)
    if num_batches < args.update_freq:
        raise TrainingError(f'{num_batches} batches per epoch cannot fill --update_freq {args.update_freq}')
    steps_per_epoch = num_batches // args.update_freq
    total_batch = args.batch_size * args.update_freq * world_size
    logger.info(f'batch {total_batch} ({args.batch_size} x {args.update_freq} accumulation x {world_size} '
                f'processes), {steps_per_epoch} steps per epoch, lr {args.lr:.2e}')
    return TrainLoader(train_sampler, train_loader, num_batches, steps_per_epoch)


def build_optimizer_and_schedules(args: argparse.Namespace, run: RunSetup, net: RunModel,
                                  steps_per_epoch: int) -> Optimization:
    """The optimizer, the fp16 loss scaler, the per-step lr/wd schedules, mixup and the loss."""
    optimizer = create_optimizer(args, net.model_without_ddp)
    loss_scaler = utils.LossScaler(run.device.type, enabled=run.amp_dtype == torch.float16)
    schedules = Schedules(optimizer, args, steps_per_epoch)
    mixup_fn, criterion = build_training_parts(args, args.nb_classes)
    return Optimization(optimizer, loss_scaler, schedules, mixup_fn, criterion)


def resume_or_start(args: argparse.Namespace, run: RunSetup, data: RunData, net: RunModel, opt: Optimization,
                    train: TrainLoader) -> Start:
    """The training state of the checkpoint to continue from (if any) and log.txt trimmed back to it."""
    resumed = run_dir.ResumeState(start_epoch=args.start_epoch)
    resume_path = run.resume_path
    if resume_path:
        resumed = load_resume(args, resume_path, net.model_without_ddp, opt.optimizer, opt.loss_scaler,
                              net.model_ema, classes=data.train_classes)
    start_epoch, best = resumed.start_epoch, resumed.best
    position = step_position(args, resumed.checkpoint, resume_path, run.rank, run.world_size, train.num_batches)
    if position is not None and train.sampler is None:
        raise TrainingError(f'{resume_path} is a mid-epoch checkpoint; a streamed --data_set {args.data_set} cannot '
                            f'start inside an epoch: remove {resume_path} to restart epoch {position.epoch}')
    if run.manager is not None and utils.is_main_process():
        run_dir.trim_log(args.output_dir, start_epoch)
    return Start(start_epoch, best, position)


def open_loggers(args: argparse.Namespace, start: Start, steps_per_epoch: int
                 ) -> tuple[utils.TensorboardLogger | None, utils.WandbLogger | None]:
    """TensorBoard (continuing where the resumed checkpoint left off) and W&B, on the main process."""
    log_writer = None
    wandb_logger = None
    if utils.is_main_process():
        tb_dir = args.log_dir or args.output_dir
        if tb_dir:  # after a resume, drop the steps a stopped run logged past its checkpoint
            start_epoch, position = start.epoch, start.position
            purge = start_epoch * steps_per_epoch if position is None else \
                start_epoch * steps_per_epoch * args.update_freq + position.batch  # the loss tags' x axis
            log_writer = utils.TensorboardLogger(tb_dir, purge_step=purge or None)
        if args.enable_wandb:
            wandb_logger = utils.WandbLogger(args)
    return log_writer, wandb_logger


def evaluate_epoch(args: argparse.Namespace, run: RunSetup, data: RunData, net: RunModel, epoch: int,
                   best: dict[str, float], stats: dict[str, float],
                   log_writer: utils.TensorboardLogger | None) -> list[str]:
    """The evaluation after an epoch (model and EMA): numbers into ``stats``, new bests into ``best``;
    returns the best checkpoints to write."""
    to_save: list[str] = []
    model_without_ddp, model_ema, amp_dtype = net.model_without_ddp, net.model_ema, run.amp_dtype
    test_stats = evaluate(data.val_loader, model_without_ddp, run.device, amp_dtype, data.dist_eval)
    _require_finite(epoch, model_without_ddp, test_stats)
    stats.update({f'test_{k}': v for k, v in test_stats.items()})
    if test_stats['acc1'] > best['max_accuracy']:
        best['max_accuracy'] = test_stats['acc1']
        to_save.append('best')
    logger.info(f'Max accuracy: {best["max_accuracy"]:.2f}%')
    if model_ema is not None and args.model_ema_eval:
        ema_stats = evaluate(data.val_loader, model_ema.module, _device_of(model_ema.module), amp_dtype,
                             data.dist_eval, header='Test (EMA):')
        _require_finite(epoch, model_ema.module, ema_stats, what='EMA model')
        stats.update({f'test_{k}_ema': v for k, v in ema_stats.items()})
        if ema_stats['acc1'] > best['max_accuracy_ema']:
            best['max_accuracy_ema'] = ema_stats['acc1']
            to_save.append('best-ema')
        logger.info(f'Max EMA accuracy: {best["max_accuracy_ema"]:.2f}%')
    if log_writer is not None:
        log_writer.update(head='perf', step=epoch, **{k: stats[k] for k in (
            'test_acc1', 'test_acc5', 'test_loss', 'test_acc1_ema') if k in stats})
    return to_save


def save_epoch(args: argparse.Namespace, run: RunSetup, data: RunData, net: RunModel, opt: Optimization,
               epoch: int, last_epoch: int, best: dict[str, float], stats: dict[str, float],
               to_save: list[str]) -> None:
    """log.txt's line of the epoch, then its checkpoints (``to_save`` and, on the save grid, the epoch's)."""
    # log line first, then the checkpoints (best before the epoch file, all holding the full
    # training state): a kill in between re-trains this epoch from the newest complete file,
    # and the resumed run trims log.txt back to that file's epoch
    stats.update(epoch=epoch, n_parameters=net.n_parameters, GFLOPs=net.gflops)
    if data.val_loader is not None:
        stats['max_accuracy'] = best['max_accuracy']
        if net.model_ema is not None and args.model_ema_eval:
            stats['max_ema_accuracy'] = best['max_accuracy_ema']
    # a run stopping on --run_epochs always saves, so the rerun continues from here
    if (epoch + 1) % args.save_ckpt_freq == 0 or epoch + 1 in (args.epochs, last_epoch):
        to_save.append(str(epoch))
    manager = run.manager
    with utils.signals_held():  # Ctrl-C, SIGTERM or a preemption waits for these files
        if manager is not None and utils.is_main_process():
            run_dir.append_log(args.output_dir, stats)
        if manager is not None and args.save_ckpt and to_save:
            on_main(functools.partial(save_checkpoints, manager, to_save, args, epoch, net.model_without_ddp,
                                      opt.optimizer, opt.loss_scaler, net.model_ema, best,
                                      label_names=data.train_classes))


def train_loop(args: argparse.Namespace, cleanup: contextlib.ExitStack, run: RunSetup, data: RunData,
               net: RunModel, train: TrainLoader, opt: Optimization, start: Start) -> dict[str, float]:
    """The epochs from ``start`` up to --epochs (at most --run_epochs of them), each evaluated and
    saved, then the final weights; returns the last epoch's numbers."""
    start_epoch, best, position = start.epoch, start.best, start.position
    rank, steps_per_epoch = run.rank, train.steps_per_epoch
    model_without_ddp, model_ema = net.model_without_ddp, net.model_ema
    log_writer, wandb_logger = open_loggers(args, start, steps_per_epoch)
    last_epoch = args.epochs if args.run_epochs <= 0 else min(args.epochs, start_epoch + args.run_epochs)
    if start_epoch >= args.epochs:
        logger.info(f'all {args.epochs} epochs are trained ({run.resume_path}); nothing to do (pass a larger '
                    '--epochs to train on, or --eval true to evaluate)')
    else:
        logger.info(f'training epochs {start_epoch}..{last_epoch - 1} of {args.epochs}')
    start_time = time.time()
    stats: dict[str, float] = {}
    step_saver = StepCheckpointer(args, run.manager, steps_per_epoch, functools.partial(
        training_state, args, model=model_without_ddp, optimizer=opt.optimizer, loss_scaler=opt.loss_scaler,
        model_ema=model_ema, best=best, label_names=data.train_classes),
        enabled=train.sampler is not None)  # a stream cannot start inside an epoch: it resumes at the epoch start
    # from here a stop request waits for an optimizer-step boundary (a step checkpoint, then the stop),
    # or, arriving during an evaluation, for the end of that epoch's files
    cleanup.enter_context(utils.stops_at_step_boundary())
    for epoch in range(start_epoch, last_epoch):
        epoch_start = time.time()
        datasets.set_epoch(train.loader, epoch, args.seed, rank)
        # per-epoch seeds make augmentation, mixup and drop path independent of where a run resumed
        utils.seed_everything(utils.seed_for(args.seed, rank, epoch))
        start_batch, metric_logger = 0, utils.MetricLogger()
        if position is not None and position.epoch == epoch:
            start_batch = resume_inside_epoch(position, train.sampler, metric_logger, args.batch_size)
        train_stats = train_one_epoch(
            net.model, opt.criterion, train.loader, opt.optimizer, run.device, epoch, opt.loss_scaler, args.clip_grad,
            model_ema, opt.mixup_fn, log_writer=log_writer, schedules=opt.schedules,
            start_steps=epoch * steps_per_epoch, update_freq=args.update_freq, amp_dtype=run.amp_dtype,
            print_freq=args.print_freq, num_batches=train.num_batches, clip_mode=args.clip_grad_mode,
            start_batch=start_batch, metric_logger=metric_logger,
            reseed=functools.partial(_seed_batch, args.seed, rank, epoch),
            on_step=functools.partial(step_saver.on_step, epoch))
        # log.txt keys and TensorBoard tags are the original's: train_*, test_*, test_*_ema,
        # epoch, n_parameters, GFLOPs, max_accuracy, max_ema_accuracy
        stats = {f'train_{k}': v for k, v in train_stats.items()}
        _require_finite(epoch, model_without_ddp)
        if model_ema is not None:
            _require_finite(epoch, model_ema.module, what='EMA model')
        # written after the log line, best first (see save_epoch)
        to_save = evaluate_epoch(args, run, data, net, epoch, best, stats, log_writer) \
            if data.val_loader is not None else []
        save_epoch(args, run, data, net, opt, epoch, last_epoch, best, stats, to_save)
        if log_writer is not None:
            log_writer.flush()
        if wandb_logger is not None:
            wandb_logger.log_epoch(stats)
        took = time.time() - epoch_start
        eta = datetime.timedelta(seconds=int(took * (last_epoch - epoch - 1)))
        logger.info(f'Epoch {epoch + 1}/{args.epochs} done in {datetime.timedelta(seconds=int(took))}, '
                    f'training ETA {eta}')
        step_saver.saved()
        utils.handle_pending_signals()  # a stop that arrived during the evaluation or the saves

    total = datetime.timedelta(seconds=int(time.time() - start_time))
    logger.info(f'Training time {total}')
    if run.manager is not None and args.save_safetensors and last_epoch == args.epochs:
        on_main(lambda: save_final_weights(args.output_dir, model_without_ddp, model_ema, best, data.train_classes,
                                           data.val_loader is not None and args.save_ckpt,
                                           args.imagenet_default_mean_and_std))
    if args.distributed:
        diff = utils.max_param_divergence(model_without_ddp)
        stats['rank_param_max_diff'] = diff
        logger.info(f'parameters on {run.world_size} ranks: max |difference| from rank 0 = {diff:.3g}')
    if wandb_logger is not None:
        if args.output_dir:
            wandb_logger.log_checkpoints(args.output_dir)
        wandb_logger.finish()
    utils.barrier()
    return stats


# ----------------------------------------------------------------------------- main

def main(args: argparse.Namespace) -> dict[str, float]:
    """Train (or with ``--eval true`` only evaluate) as configured by ``args``.

    Returns the final statistics (last epoch's train/test numbers, or the evaluation).
    """
    with contextlib.ExitStack() as cleanup:  # releases the --output_dir lock however the run ends
        return _main(args, cleanup)


def _main(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> dict[str, float]:
    """The steps of a run, in order; ``cleanup`` closes what they open (the folder's lock, the stop guard)."""
    run = setup_run(args, cleanup)
    data = build_data(args, run)
    net = build_model_and_ema(args, run, data)
    if args.eval:
        return evaluate_only(args, run, data, net)

    train = build_train_loader(args, run, data.train)
    if args.distributed:
        net.model = torch.nn.parallel.DistributedDataParallel(
            net.model, device_ids=[args.gpu] if run.device.type == 'cuda' else None)
    opt = build_optimizer_and_schedules(args, run, net, train.steps_per_epoch)
    start = resume_or_start(args, run, data, net, opt, train)
    return train_loop(args, cleanup, run, data, net, train, opt, start)


class Terminated(BaseException):
    """SIGTERM (e.g. ``kill``, or a launcher stopping its workers) outside submitit."""


_SIGTERM_OWNER = [0]  # pid of the process whose run() installed the handler


def _on_sigterm(signum, frame):
    if os.getpid() != _SIGTERM_OWNER[0]:  # a forked DataLoader worker: die as before
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


def run(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: parse, run, and turn user errors into a message and an exit code:
    2 for a bad input, 130 for Ctrl-C, 143 for SIGTERM (rerunning the command resumes).

    Ctrl-C and SIGTERM that arrive during a training step, a checkpoint write or a TensorBoard update
    stop the run when it ends (utils.defer_signal), so they never break a file or the writer; a
    second one stops it at once."""
    args = parse_args(argv)
    # keep a handler someone else installed (submitit, SLURM tools); signals need the main thread
    own_sigterm = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
    if own_sigterm:
        _SIGTERM_OWNER[0] = os.getpid()
        signal.signal(signal.SIGTERM, _on_sigterm)
    restore = [utils.defer_signal(signal.SIGINT)] + ([utils.defer_signal(signal.SIGTERM)] if own_sigterm else [])
    stops = {signal.SIGINT: (130, 'interrupted; rerun the same command to resume'),
             signal.SIGTERM: (143, 'terminated (SIGTERM); rerun the same command to resume')}
    try:
        main(args)
    except BaseException as e:
        # a terminal's Ctrl-C or SLURM's SIGTERM reaches the DataLoader workers too: an error that
        # their death raised here (before or instead of ours) is reported as the stop it is
        sig = signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM if isinstance(e, Terminated) \
            else next((s for s in stops if utils.signal_received(s)), None)
        if sig is not None:
            code, message = stops[sig]
            logger.error(message)
            return code
        if isinstance(e, utils.user_error_types()):  # the rule of utils.exits_on_user_error, via the log
            logger.error(f'error: {utils.one_line(e)}')
            return 2
        raise
    finally:
        for put_back in restore:
            if put_back is not None:
                put_back()
        if own_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(run())
