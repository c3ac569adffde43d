"""Train and evaluate HorNet image classifiers (ImageNet-1K/22K, CIFAR-100, demo digits).

Single process: ``python main.py --device cpu ...``; several: ``torchrun --nproc_per_node=N
main.py ...`` or ``python -m torch.distributed.launch --nproc_per_node=N main.py ...``; SLURM:
``run_with_submitit.py``. Flags and defaults follow the ConvNeXt/HorNet research code; see
TRAINING.md for the per-model recipes.
"""
import argparse
import datetime
import glob
import logging
import os
import re
import sys
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import timm
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3

import calc_flops
import datasets
import models
import utils
from engine import evaluate, train_one_epoch
from optim_factory import Schedules, create_optimizer
from utils import TrainingError, str2bool

logger = logging.getLogger('hornet')
DEFAULT_NB_CLASSES = 1000
# line i: the ImageNet-22K class index of ImageNet-1K class i (the original release's mapping)
IN1K_TO_IN22K_MAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'in1k_to_in22k_map.txt')
# DDP's bucket-layout hint for mkldnn 1x1-conv gradients on CPU: a speed note, not a problem
warnings.filterwarnings('ignore', message='Grad strides do not match bucket view strides')


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
    g.add_argument('--compile', type=str2bool, default=False, help='(new) torch.compile the model')

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
    g.add_argument('--model_key', default='model|module', type=str)
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
    g.add_argument('--save_ckpt', type=str2bool, default=True)
    g.add_argument('--save_ckpt_freq', default=1, type=int)
    g.add_argument('--save_ckpt_num', default=3, type=int)
    g.add_argument('--start_epoch', default=0, type=int, metavar='N')
    g.add_argument('--eval', type=str2bool, default=False, help='only evaluate --resume')
    g.add_argument('--dist_eval', type=str2bool, default=True)
    g.add_argument('--disable_eval', type=str2bool, default=False)
    g.add_argument('--use_amp', type=str2bool, default=False)
    g.add_argument('--amp_dtype', default='fp16', choices=('fp16', 'bf16'),
                   help='(new) autocast dtype with --use_amp true; fp16 uses a gradient scaler')
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

    g = p.add_argument_group('Weights & Biases')
    g.add_argument('--enable_wandb', type=str2bool, default=False)
    g.add_argument('--project', default='hornet', type=str)
    g.add_argument('--wandb_ckpt', type=str2bool, default=False)
    g.add_argument('--exp_name', default='', type=str)
    return p


def _repair_argv(argv: Sequence[str], parser: argparse.ArgumentParser) -> List[str]:
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


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``argv`` (default: ``sys.argv[1:]``) with :func:`get_args_parser`."""
    parser = argparse.ArgumentParser('HorNet training and evaluation', parents=[get_args_parser()])
    argv = sys.argv[1:] if argv is None else list(argv)
    return parser.parse_args(_repair_argv(argv, parser))


# ----------------------------------------------------------------------------- building blocks

def build_model(args: argparse.Namespace, num_classes: Optional[int] = None) -> torch.nn.Module:
    """The ``--model`` network with the drop-path, layer-scale, head-init and size overrides."""
    valid = sorted(timm.list_models('hornet_*'))
    if args.model not in valid:
        raise TrainingError(f'unknown --model {args.model!r}; valid models: {", ".join(valid)}')
    if num_classes is None:
        num_classes = DEFAULT_NB_CLASSES if args.nb_classes is None else args.nb_classes
    kwargs = dict(num_classes=num_classes,
                  drop_path_rate=args.drop_path, layer_scale_init_value=args.layer_scale_init_value,
                  head_init_scale=args.head_init_scale)
    if args.depths is not None:
        kwargs['depths'] = tuple(args.depths)
    if args.base_dim is not None:
        kwargs['base_dim'] = args.base_dim
    return timm.create_model(args.model, pretrained=False, **kwargs)


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


def load_finetune(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """Initialise ``model`` from ``--finetune`` (``--model_key``, ``--model_prefix``, ``--head_map``).

    GF filters are resized to the model; a head with another class count is dropped, or mapped
    row by row with ``--head_map``. A 21841-class head going to 1000 classes is mapped with the
    shipped ImageNet-1K -> 22K index file (as the original) unless ``--head_map`` says otherwise.
    """
    ckpt = utils.load_checkpoint_file(args.finetune)
    state = None
    for key in args.model_key.split('|'):
        if key in ckpt and isinstance(ckpt[key], dict):
            state = ckpt[key]
            logger.info(f'fine-tuning from {args.finetune} [{key}]')
            break
    state = dict(ckpt if state is None else state)
    if args.model_prefix:
        state = {k[len(args.model_prefix):]: v for k, v in state.items() if k.startswith(args.model_prefix)}
    state = models.unwrap_checkpoint(state)
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
    state = models.checkpoint_filter_fn(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        logger.info(f'fresh parameters: {", ".join(missing)}')


def model_gflops(args: argparse.Namespace) -> float:
    """GFLOPs of one ``--input_size`` image through the ``--model`` network (counted on the meta
    device, so no memory is allocated); logged in log.txt as ``GFLOPs``, as the original."""
    with torch.device('meta'):
        model = build_model(args)
    return calc_flops.count_flops(model, (args.input_size, args.input_size))['total'] / 1e9


def build_training_parts(args: argparse.Namespace, num_classes: int) -> Tuple[Optional[Mixup], torch.nn.Module]:
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


def amp_dtype_of(args: argparse.Namespace) -> Optional[torch.dtype]:
    if not args.use_amp:
        return None
    return torch.float16 if args.amp_dtype == 'fp16' else torch.bfloat16


def load_resume(args: argparse.Namespace, model: torch.nn.Module, optimizer=None, loss_scaler=None,
                model_ema: Optional[ModelEmaV3] = None) -> Dict[str, float]:
    """Load ``--resume`` into the model (strictly), and unless ``--eval``, the optimizer, scaler,
    EMA, epoch (``args.start_epoch``) and best accuracies. Returns the best accuracies."""
    best = dict(max_accuracy=0.0, max_accuracy_ema=0.0)
    if not args.resume:
        return best
    ckpt = utils.load_checkpoint_file(args.resume)
    state = models.unwrap_checkpoint(ckpt)
    if any(k.startswith('backbone.') for k in state):  # mmpretrain layout
        state = models.checkpoint_filter_fn(state, model)
    models.check_state_dict(state, model, what=f'checkpoint {args.resume}')
    model.load_state_dict(state)
    logger.info(f'resumed model weights from {args.resume}')
    if model_ema is not None:
        if isinstance(ckpt.get('model_ema'), dict):
            model_ema.module.load_state_dict(ckpt['model_ema'])
        else:
            model_ema.set(model)  # released checkpoints hold no EMA: start it at the weights
    if args.eval or optimizer is None or 'optimizer' not in ckpt or 'epoch' not in ckpt:
        return best
    optimizer.load_state_dict(ckpt['optimizer'])
    if loss_scaler is not None and 'scaler' in ckpt:
        loss_scaler.load_state_dict(ckpt['scaler'])
    args.start_epoch = int(ckpt['epoch']) + 1
    best['max_accuracy'] = float(ckpt.get('max_accuracy', 0.0))
    best['max_accuracy_ema'] = float(ckpt.get('max_accuracy_ema', 0.0))
    logger.info(f'resumed optimizer state; continuing at epoch {args.start_epoch}')
    return best


def save_checkpoint(args: argparse.Namespace, name: str, epoch: int, model: torch.nn.Module,
                    optimizer, loss_scaler, model_ema: Optional[ModelEmaV3], best: Dict[str, float]) -> None:
    ckpt = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch,
                scaler=loss_scaler.state_dict(), args=utils.plain_args(args), **best)
    if model_ema is not None:
        ckpt['model_ema'] = model_ema.module.state_dict()
    utils.save_on_master(ckpt, os.path.join(args.output_dir, f'checkpoint-{name}.pth'))


def _device_of(model: torch.nn.Module) -> torch.device:
    """Where a model's weights live (the EMA copy may sit on the CPU: --model_ema_force_cpu)."""
    return next(model.parameters()).device


def _check_device(args: argparse.Namespace) -> torch.device:
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise TrainingError(f'--device {args.device} but no CUDA device is available; pass --device cpu')
    return device


def _loader(dataset, sampler, args, batch_size: int, drop_last: bool, device: torch.device):
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=batch_size, num_workers=args.num_workers,
        pin_memory=args.pin_mem and device.type == 'cuda', drop_last=drop_last)


# ----------------------------------------------------------------------------- main

def main(args: argparse.Namespace) -> Dict[str, float]:
    """Train (or with ``--eval true`` only evaluate) as configured by ``args``.

    Returns the final statistics (last epoch's train/test numbers, or the evaluation).
    """
    utils.init_distributed_mode(args)
    utils.setup_logging()
    device = _check_device(args)
    rank, world_size = utils.get_rank(), utils.get_world_size()
    if args.model not in timm.list_models('hornet_*'):
        build_model(args)  # raises with the list of valid names
    utils.seed_everything(args.seed + rank)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        if utils.is_main_process():  # temp files of a killed save
            for tmp in glob.glob(os.path.join(glob.escape(args.output_dir), '.tmp-*.pth')):
                os.remove(tmp)
    amp_dtype = amp_dtype_of(args)

    if utils.is_main_process():
        datasets.prepare_data(args)
    utils.barrier()
    dataset_train = None
    if not args.eval:
        dataset_train, nb_classes = datasets.build_dataset(True, args)
        args.nb_classes = nb_classes
    dataset_val = None
    if args.eval or not args.disable_eval:
        dataset_val, nb_classes = datasets.build_dataset(False, args)
        args.nb_classes = nb_classes

    model = build_model(args)
    if args.finetune:
        load_finetune(args, model)
    model.to(device)
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

    val_loader = None
    if dataset_val is not None:
        if datasets.is_stream(dataset_val):
            val_sampler = None  # shards itself by rank and loader worker
        elif args.distributed and args.dist_eval:
            val_sampler = datasets.ShardedEvalSampler(dataset_val, world_size, rank)
        else:
            val_sampler = torch.utils.data.SequentialSampler(dataset_val)
        val_loader = _loader(dataset_val, val_sampler, args, int(1.5 * args.batch_size), False, device)
    # a stream is split over the ranks whatever --dist_eval says, so its counts are always summed
    dist_eval = args.distributed and (args.dist_eval or datasets.is_stream(dataset_val))

    if args.eval:
        load_resume(args, model_without_ddp, model_ema=model_ema)
        stats = {f'test_{k}': v for k, v in evaluate(val_loader, model, device, amp_dtype, dist_eval).items()}
        if model_ema is not None and args.model_ema_eval:
            ema = evaluate(val_loader, model_ema.module, _device_of(model_ema.module), amp_dtype, dist_eval, header='Test (EMA):')
            stats.update({f'test_{k}_ema': v for k, v in ema.items()})
        return stats

    shares = 1 if datasets.is_stream(dataset_train) else world_size  # a stream's length is this process's share
    if len(dataset_train) < args.batch_size * shares:
        what = 'this process\'s share of the training set has' if shares < world_size else 'the training set has'
        raise TrainingError(f'{what} {len(dataset_train)} images, fewer than one batch ({args.batch_size} x '
                            f'{shares} processes); lower --batch_size')
    train_sampler = datasets.build_train_sampler(dataset_train, world_size, rank, args.seed)
    train_loader = _loader(dataset_train, train_sampler, args, args.batch_size, True, device)
    num_batches = len(train_loader)
    if args.max_batches_per_epoch > 0:
        num_batches = min(num_batches, args.max_batches_per_epoch)
    if num_batches < args.update_freq:
        raise TrainingError(f'{num_batches} batches per epoch cannot fill --update_freq {args.update_freq}')
    steps_per_epoch = num_batches // args.update_freq
    total_batch = args.batch_size * args.update_freq * world_size
    logger.info(f'batch {total_batch} ({args.batch_size} x {args.update_freq} accumulation x {world_size} '
                f'processes), {steps_per_epoch} steps per epoch, lr {args.lr:.2e}')

    if args.compile:
        model = torch.compile(model)
    if args.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[args.gpu] if device.type == 'cuda' else None)
    optimizer = create_optimizer(args, model_without_ddp)
    loss_scaler = utils.LossScaler(device.type, enabled=amp_dtype == torch.float16)
    schedules = Schedules(optimizer, args, steps_per_epoch)
    mixup_fn, criterion = build_training_parts(args, args.nb_classes)

    if args.auto_resume and not args.resume and args.output_dir:
        args.resume = utils.find_latest_checkpoint(args.output_dir) or ''
    best = load_resume(args, model_without_ddp, optimizer, loss_scaler, model_ema)
    if args.output_dir:
        utils.trim_log(args.output_dir, args.start_epoch)

    log_writer = None
    wandb_logger = None
    if utils.is_main_process():
        tb_dir = args.log_dir or args.output_dir
        if tb_dir:
            log_writer = utils.TensorboardLogger(tb_dir)
        if args.enable_wandb:
            wandb_logger = utils.WandbLogger(args)

    last_epoch = args.epochs if args.run_epochs <= 0 else min(args.epochs, args.start_epoch + args.run_epochs)
    logger.info(f'training epochs {args.start_epoch}..{last_epoch - 1} of {args.epochs}')
    start_time = time.time()
    stats: Dict[str, float] = {}
    for epoch in range(args.start_epoch, last_epoch):
        epoch_start = time.time()
        datasets.set_epoch(train_loader, epoch, args.seed, rank)
        # per-epoch seeds make augmentation, mixup and drop path independent of where a run resumed
        utils.seed_everything(utils.seed_for(args.seed, rank, epoch))
        train_stats = train_one_epoch(
            model, criterion, train_loader, optimizer, device, epoch, loss_scaler, args.clip_grad,
            model_ema, mixup_fn, log_writer=log_writer, schedules=schedules,
            start_steps=epoch * steps_per_epoch, update_freq=args.update_freq, amp_dtype=amp_dtype,
            print_freq=args.print_freq, num_batches=num_batches, clip_mode=args.clip_grad_mode)
        # log.txt keys and TensorBoard tags are the original's: train_*, test_*, test_*_ema,
        # epoch, n_parameters, GFLOPs, max_accuracy, max_ema_accuracy
        stats = {f'train_{k}': v for k, v in train_stats.items()}

        if val_loader is not None:
            test_stats = evaluate(val_loader, model_without_ddp, device, amp_dtype, dist_eval)
            stats.update({f'test_{k}': v for k, v in test_stats.items()})
            if test_stats['acc1'] > best['max_accuracy']:
                best['max_accuracy'] = test_stats['acc1']
                if args.output_dir and args.save_ckpt:
                    save_checkpoint(args, 'best', epoch, model_without_ddp, optimizer, loss_scaler, model_ema, best)
            logger.info(f'Max accuracy: {best["max_accuracy"]:.2f}%')
            if model_ema is not None and args.model_ema_eval:
                ema_stats = evaluate(val_loader, model_ema.module, _device_of(model_ema.module), amp_dtype, dist_eval,
                                     header='Test (EMA):')
                stats.update({f'test_{k}_ema': v for k, v in ema_stats.items()})
                if ema_stats['acc1'] > best['max_accuracy_ema']:
                    best['max_accuracy_ema'] = ema_stats['acc1']
                    if args.output_dir and args.save_ckpt:
                        save_checkpoint(args, 'best-ema', epoch, model_without_ddp, optimizer, loss_scaler,
                                        model_ema, best)
                logger.info(f'Max EMA accuracy: {best["max_accuracy_ema"]:.2f}%')
            if log_writer is not None:
                log_writer.update(head='perf', step=epoch, **{k: stats[k] for k in (
                    'test_acc1', 'test_acc5', 'test_loss', 'test_acc1_ema') if k in stats})

        # log line first, then the checkpoint: a kill in between re-trains this epoch, and the
        # resumed run trims log.txt back to the checkpoint's epoch
        stats.update(epoch=epoch, n_parameters=n_parameters, GFLOPs=gflops)
        if val_loader is not None:
            stats['max_accuracy'] = best['max_accuracy']
            if model_ema is not None and args.model_ema_eval:
                stats['max_ema_accuracy'] = best['max_accuracy_ema']
        if args.output_dir:
            utils.append_log(args.output_dir, stats)
        if args.output_dir and args.save_ckpt and \
                ((epoch + 1) % args.save_ckpt_freq == 0 or epoch + 1 == args.epochs):
            save_checkpoint(args, str(epoch), epoch, model_without_ddp, optimizer, loss_scaler, model_ema, best)
            utils.prune_checkpoints(args.output_dir, args.save_ckpt_num)
        if log_writer is not None:
            log_writer.flush()
        if wandb_logger is not None:
            wandb_logger.log_epoch(stats)
        took = time.time() - epoch_start
        eta = datetime.timedelta(seconds=int(took * (last_epoch - epoch - 1)))
        logger.info(f'Epoch {epoch + 1}/{args.epochs} done in {datetime.timedelta(seconds=int(took))}, '
                    f'training ETA {eta}')

    total = datetime.timedelta(seconds=int(time.time() - start_time))
    logger.info(f'Training time {total}')
    if args.distributed:
        diff = utils.max_param_divergence(model_without_ddp)
        stats['rank_param_max_diff'] = diff
        logger.info(f'parameters on {world_size} ranks: max |difference| from rank 0 = {diff:.3g}')
    if wandb_logger is not None:
        if args.output_dir:
            wandb_logger.log_checkpoints(args.output_dir)
        wandb_logger.finish()
    utils.barrier()
    return stats


def _user_message(e: BaseException) -> str:
    msg = str(e).strip()
    if 'Original Traceback' in msg:  # re-raised from a DataLoader worker: keep the last line
        msg = msg.splitlines()[-1]
    return msg


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: parse, run, and turn user errors into a message and exit code 2."""
    args = parse_args(argv)
    try:
        main(args)
    except (TrainingError, models.CheckpointMismatchError) as e:
        logger.error(f'error: {_user_message(e)}')
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(run())
