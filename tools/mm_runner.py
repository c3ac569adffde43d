"""Command-line plumbing shared by the OpenMMLab train/test scripts of ``object_detection/`` and
``semantic_segmentation/``: the common flags, config loading with overrides, and checkpoint loading."""
import argparse
import os
import os.path as osp
from typing import List, Optional

from mmengine.config import Config, DictAction


def add_runner_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--work-dir``, ``--cfg-options`` (alias ``--options``), ``--launcher`` and
    ``--local_rank``/``--local-rank`` (passed by ``torch.distributed.launch``)."""
    parser.add_argument('--work-dir', '--work_dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--cfg-options', '--options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.drop_path_rate=0.3')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (the dist_*.sh scripts use pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def parse_runner_args(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_runner_config(args: argparse.Namespace) -> Config:
    """``args.config`` with the launcher, ``--cfg-options`` and the work dir applied."""
    if not osp.isfile(args.config):
        raise SystemExit(f'config file not found: {args.config}')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def allow_mmengine_checkpoints() -> None:
    """Let torch unpickle mmengine 0.10 checkpoints (resume, test).

    They hold training state (message hub, history buffers, numpy scalars) that torch >= 2.6's
    default weights-only loader refuses. Only pass checkpoints you trust to these scripts, as with
    mmengine itself.
    """
    os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')


def enable_amp(cfg: Config) -> None:
    """``--amp``: mixed-precision training through mmengine's ``AmpOptimWrapper`` (dynamic loss scale)."""
    if cfg.optim_wrapper.get('type', 'OptimWrapper') != 'AmpOptimWrapper':
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'


def apply_resume(cfg: Config, resume: Optional[str], load_from: Optional[str]) -> None:
    """``--resume`` (``'auto'``: the newest checkpoint in the work dir; else that checkpoint, with its
    optimizer and iteration) or, when not resuming, ``--load-from`` (weights only)."""
    if resume is not None:
        cfg.resume = True
        cfg.load_from = None if resume == 'auto' else resume
    else:
        cfg.resume = False
        if load_from:
            cfg.load_from = load_from
