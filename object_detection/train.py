"""Train a detector from an mmdet 3.x config (mmengine Runner).

    python object_detection/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]]
        [--cfg-options key=value ...] [--launcher pytorch]

Multi-GPU: ``bash object_detection/dist_train.sh CONFIG 8`` (torchrun, ``--launcher pytorch``).
"""
import argparse

from mmengine.config import Config

if not __package__:  # run as a file, not imported from the repository root: see _repo_root.py
    import _repo_root  # noqa: F401

from tools.mm_runner import (
    DataError,
    add_runner_args,
    apply_resume,
    build_runner,
    enable_amp,
    exit_on_checkpoint_error,
    load_runner_config,
    parse_runner_args,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a HorNet detector (mmdet 3.x)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by (total batch size / 16)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or from the latest one in work-dir '
                             'if no path is given')
    parser.add_argument('--load-from', help='initialise the whole detector from this checkpoint')
    return parse_runner_args(add_runner_args(parser), argv)


def build_config(args: argparse.Namespace) -> Config:
    """Load the config and apply the command-line overrides."""
    cfg = load_runner_config(args)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise DataError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    apply_resume(cfg, args.resume, args.load_from)
    return cfg


@exit_on_checkpoint_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = build_config(args)
    runner = build_runner(cfg, args)
    runner.train()


if __name__ == '__main__':
    main()
