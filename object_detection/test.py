"""Evaluate a detector checkpoint on the config's test set (COCO bbox / segm AP).

    python object_detection/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
        [--cfg-options key=value ...] [--launcher pytorch]

Multi-GPU: ``bash object_detection/dist_test.sh CONFIG CHECKPOINT 8``.
"""
import argparse
import json
import os.path as osp

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test a HorNet detector (mmdet 3.x)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump raw predictions to this pickle file')
    parser.add_argument('--metrics-out', help='write the metrics as JSON to this file')
    parser.add_argument('--show-dir', help='save visualised predictions under work-dir/show-dir')
    return parse_runner_args(add_runner_args(parser), argv)


@exit_on_checkpoint_error
def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise DataError(f'checkpoint not found: {args.checkpoint}')
    cfg = load_runner_config(args)
    cfg.load_from = args.checkpoint
    # the checkpoint holds every weight: skip the backbone's ImageNet initialisation
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.backbone.pop('pretrained', None)
    if args.show_dir:
        cfg.default_hooks.visualization.update(draw=True, test_out_dir=args.show_dir)
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise DataError('--out must be a .pkl file')
        cfg.test_evaluator = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) \
            else [cfg.test_evaluator]
        cfg.test_evaluator.append(dict(type='DumpDetResults', out_file_path=args.out))
    runner = build_runner(cfg, args, strict_load=True)  # a checkpoint that does not fit is an error
    metrics = runner.test()
    if get_rank() == 0:
        print(json.dumps({k: float(v) for k, v in metrics.items()}, indent=1))
        if args.metrics_out:
            with open(args.metrics_out, 'w') as f:
                json.dump({k: float(v) for k, v in metrics.items()}, f, indent=1)
    return metrics


if __name__ == '__main__':
    main()
