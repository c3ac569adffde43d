"""Evaluate a HorNet segmentor checkpoint on ADE20K (mIoU) with mmsegmentation 1.x.

Single-scale:
    python semantic_segmentation/test.py CONFIG CHECKPOINT
Multi-scale + flip (the ``tta_pipeline`` of the config: 0.5-1.75 x the test scale, each flipped):
    python semantic_segmentation/test.py CONFIG CHECKPOINT --aug-test
Several GPUs:
    bash semantic_segmentation/dist_test.sh CONFIG CHECKPOINT 8 [--aug-test]

The 0.x flags ``--eval mIoU`` and ``--options`` are accepted. The last line printed is
``metrics: {...}`` (JSON) on rank 0.
"""
import argparse
import json

from mmengine.config import Config
from mmengine.dist import get_rank

if not __package__:  # run as a file, not imported from the repository root: see _repo_root.py
    import _repo_root  # noqa: F401

from tools.mm_runner import (
    DataError,
    add_runner_args,
    build_runner,
    exit_on_checkpoint_error,
    load_runner_config,
    parse_runner_args,
)

IOU_METRICS = ('mIoU', 'mDice', 'mFscore')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Evaluate a HorNet segmentor (mmsegmentation 1.x)')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--aug-test', '--tta', dest='aug_test', action='store_true',
                        help='multi-scale + flip test (the config\'s tta_pipeline)')
    parser.add_argument('--eval', nargs='+', default=None, choices=IOU_METRICS,
                        help='metrics to compute (default: the config\'s, mIoU)')
    parser.add_argument('--out', help='directory for the predicted label maps (PNG, ADE20K label ids)')
    parser.add_argument('--show-dir', help='directory for painted predictions')
    return parse_runner_args(add_runner_args(parser), argv)


def build_config(args: argparse.Namespace) -> Config:
    """Load the config and apply the command-line overrides."""
    cfg = load_runner_config(args)
    cfg.load_from = args.checkpoint
    # weights come from the checkpoint: no download of the classification one
    cfg.model.pretrained = None
    cfg.model.backbone.pop('init_cfg', None)

    if args.eval:
        cfg.test_evaluator['iou_metrics'] = list(args.eval)
    if args.show_dir:
        cfg.default_hooks.visualization.update(draw=True, show=False)
        cfg.visualizer.save_dir = args.show_dir
    if args.aug_test:
        if 'tta_pipeline' not in cfg:
            raise DataError(f'{args.config} defines no tta_pipeline, which --aug-test needs')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        tta_model = dict(cfg.get('tta_model', dict(type='SegTTAModel')))
        tta_model['module'] = cfg.model
        cfg.model = tta_model
    if args.out is not None:
        cfg.test_evaluator['output_dir'] = args.out
    return cfg


@exit_on_checkpoint_error
def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    cfg = build_config(args)
    runner = build_runner(cfg, args, strict_load=True)  # a checkpoint that does not fit is an error
    metrics = runner.test()
    if get_rank() == 0:
        print('metrics: ' + json.dumps({k: float(v) for k, v in metrics.items()}), flush=True)
    return metrics


if __name__ == '__main__':
    main()
