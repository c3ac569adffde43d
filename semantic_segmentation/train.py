"""Train a HorNet segmentor on ADE20K with mmsegmentation 1.x (mmengine Runner).

Single GPU / CPU:
    python semantic_segmentation/train.py semantic_segmentation/configs/hornet/upernet_hornet_tiny_gf_512_160k_ade20k.py
Several GPUs (torchrun):
    bash semantic_segmentation/dist_train.sh CONFIG 8 --work-dir work_dirs/x

Flags of the original mmseg 0.x commands (``--options``, ``--seed``, ``--deterministic``,
``--load-from``, ``--resume-from``, ``--no-validate``, ``model.pretrained=...``) still work.
"""
import argparse

from mmengine.config import Config

if not __package__:  # run as a file, not imported from the repository root: see _repo_root.py
    import _repo_root  # noqa: F401

from tools.mm_runner import (
    add_runner_args,
    apply_resume,
    build_runner,
    enable_amp,
    exit_on_checkpoint_error,
    load_runner_config,
    parse_runner_args,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a HorNet segmentor (mmsegmentation 1.x)')
    parser.add_argument('config', help='config file')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume training: from the latest checkpoint in work-dir, or from the given path')
    parser.add_argument('--resume-from', '--resume_from', help='checkpoint to resume from (same as --resume PATH)')
    parser.add_argument('--load-from', '--load_from', help='checkpoint whose weights initialise the model')
    parser.add_argument('--no-validate', action='store_true', help='do not evaluate during training')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (fp16 on GPU)')
    parser.add_argument('--seed', type=int, default=None, help='random seed')
    parser.add_argument('--deterministic', action='store_true', help='deterministic cuDNN algorithms')
    return parse_runner_args(add_runner_args(parser), argv)


def _pretrained_to_init_cfg(cfg: Config) -> None:
    """Turn the 0.x-style ``model.pretrained=PATH`` into the backbone's ``Pretrained`` init_cfg."""
    pretrained = cfg.model.get('pretrained')
    if pretrained:
        cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        cfg.model.pretrained = None


def build_config(args: argparse.Namespace) -> Config:
    """Load the config and apply the command-line overrides."""
    cfg = load_runner_config(args)
    _pretrained_to_init_cfg(cfg)

    if args.amp:
        enable_amp(cfg)
    apply_resume(cfg, args.resume_from or args.resume, args.load_from)

    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if args.seed is not None or args.deterministic:
        cfg.randomness = dict(seed=args.seed, deterministic=args.deterministic)
    return cfg


@exit_on_checkpoint_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = build_config(args)
    runner = build_runner(cfg, args)
    runner.train()


if __name__ == '__main__':
    main()
