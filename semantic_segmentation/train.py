"""Train a HorNet segmentor on ADE20K with mmsegmentation 1.x (mmengine Runner).

Single GPU / CPU:
    python semantic_segmentation/train.py semantic_segmentation/configs/hornet/upernet_hornet_tiny_gf_512_160k_ade20k.py
Several GPUs (torchrun):
    bash semantic_segmentation/dist_train.sh CONFIG 8 --work-dir work_dirs/x

Flags of the original mmseg 0.x commands (``--options``, ``--seed``, ``--deterministic``,
``--load-from``, ``--resume-from``, ``--no-validate``, ``model.pretrained=...``) still work.
"""
import argparse
import logging
import os
import os.path as osp
import sys
from typing import List, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # configs import ``semantic_segmentation.mmseg_custom`` and ``models``

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmengine.runner import Runner  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a HorNet segmentor (mmsegmentation 1.x)')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', '--work_dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume training: from the latest checkpoint in work-dir, or from the given path')
    parser.add_argument('--resume-from', '--resume_from', help='checkpoint to resume from (same as --resume PATH)')
    parser.add_argument('--load-from', '--load_from', help='checkpoint whose weights initialise the model')
    parser.add_argument('--no-validate', action='store_true', help='do not evaluate during training')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (fp16 on GPU)')
    parser.add_argument('--seed', type=int, default=None, help='random seed')
    parser.add_argument('--deterministic', action='store_true', help='deterministic cuDNN algorithms')
    parser.add_argument('--cfg-options', '--options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.drop_path_rate=0.3 '
                             'train_dataloader.batch_size=4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (dist_train.sh uses pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def _pretrained_to_init_cfg(cfg: Config) -> None:
    """Turn the 0.x-style ``model.pretrained=PATH`` into the backbone's ``Pretrained`` init_cfg."""
    pretrained = cfg.model.get('pretrained')
    if pretrained:
        cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        cfg.model.pretrained = None


def build_config(args: argparse.Namespace) -> Config:
    """Load the config and apply the command-line overrides."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    _pretrained_to_init_cfg(cfg)

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print_log('AMP is already enabled in the config', logger='current', level=logging.WARNING)
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'

    resume_from = args.resume_from or (args.resume if args.resume not in (None, 'auto') else None)
    if resume_from:
        cfg.resume, cfg.load_from = True, resume_from
    elif args.resume == 'auto':
        cfg.resume = True
    else:
        cfg.resume = False
        if args.load_from:
            cfg.load_from = args.load_from

    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if args.seed is not None or args.deterministic:
        cfg.randomness = dict(seed=args.seed, deterministic=args.deterministic)
    return cfg


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    # mmengine 0.10 checkpoints hold training state (message hub, numpy scalars) that torch >= 2.6's
    # weights-only unpickler refuses; they are files a training run of this codebase wrote.
    os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    cfg = build_config(args)
    runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    main()
