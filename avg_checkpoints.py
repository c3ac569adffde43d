"""Average the weights of several checkpoints of one training run into one file.

Picks the last N epoch checkpoints of a run folder (``checkpoint-<epoch>.pth``, as ``main.py``
writes them) or the N with the best accuracy logged in its ``log.txt`` (``test_acc1``, or
``test_acc1_ema`` with ``--ema``), and writes the element-wise mean of their model weights (the EMA
weights with ``--ema``) as ``.safetensors`` or ``.pth`` (``{'model': ...}``, which ``--finetune``,
``export.py`` and ``predict.py`` read). Files are read weights-only and never modified; the output
is written atomically and replaces an existing file only with ``--overwrite``.

Examples::

    python avg_checkpoints.py --input output/run1 -n 5 --output output/run1/avg-last5.safetensors
    python avg_checkpoints.py --input output/run1 -n 3 --select best --ema --output avg-best3-ema.pth
"""
import argparse
import math
import os
import sys
from collections.abc import Sequence

import torch

import run_dir
from models.state_dict import non_finite_count, strip_prefixes
from utils import OneLineArgumentParser, TrainingError, exits_on_user_error


class AverageError(TrainingError):
    """Why the checkpoints cannot be averaged; one line."""


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {value!r}')
    return int(value)


def select_checkpoints(output_dir: str, n: int, select: str = 'last', ema: bool = False) -> list[tuple[int, str]]:
    """``(epoch, path)`` of the checkpoints to average: the ``n`` newest epochs, or the ``n`` with
    the best logged accuracy (ties go to the later epoch), best or newest first.

    Raises:
        AverageError: the folder has fewer than ``n`` epoch checkpoints (with a logged accuracy).
    """
    if not os.path.isdir(output_dir):
        raise AverageError(f'--input {output_dir} is not a folder; pass the --output_dir of a training run')
    files = {int(os.path.basename(p)[len('checkpoint-'):-len('.pth')]): p
             for p in run_dir.list_epoch_checkpoints(output_dir)}
    if select == 'last':
        found = sorted(files.items(), reverse=True)
        what = 'epoch checkpoints (checkpoint-<epoch>.pth)'
    else:
        key = 'test_acc1_ema' if ema else 'test_acc1'
        acc = {r['epoch']: r[key] for r in run_dir.read_log(output_dir)
               if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])}
        found = sorted(((e, p) for e, p in files.items() if e in acc), key=lambda t: (acc[t[0]], t[0]), reverse=True)
        what = f'epoch checkpoints with a {key} in log.txt'
    if len(found) < n:
        raise AverageError(f'{output_dir} has {len(found)} {what}, fewer than -n {n}; pass -n {len(found)}'
                           if found else f'{output_dir} has no {what}')
    return found[:n]


def average_weights(paths: Sequence[str], entry: str = 'model') -> dict[str, torch.Tensor]:
    """The element-wise mean of the ``entry`` state dicts of ``paths`` (floating-point tensors are
    summed in float64 and cast back; other tensors must be equal in all files).

    Raises:
        AverageError: a file cannot be read, lacks ``entry``, holds non-finite weights, or its keys,
            shapes or dtypes differ from the first file's.
    """
    total: dict[str, torch.Tensor] = {}
    first = paths[0]
    for path in paths:
        try:
            ckpt = run_dir.load_file(path)
        except run_dir.CheckpointError as e:
            raise AverageError(str(e)) from None
        state = ckpt.get(entry)
        if not isinstance(state, dict):
            hint = ' (the run had no --model_ema true; leave --ema out)' if entry == 'model_ema' else ''
            raise AverageError(f'{path} has no {entry!r} weights{hint}')
        state = strip_prefixes({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
        bad, _ = non_finite_count(state)
        if bad:
            raise AverageError(f'{path} has {bad} non-finite weights (NaN or inf); leave that epoch out')
        if not total:
            total = {k: v.double() if v.is_floating_point() else v.clone() for k, v in state.items()}
            dtypes = {k: v.dtype for k, v in state.items()}
            continue
        if state.keys() != total.keys():
            missing, extra = sorted(total.keys() - state.keys()), sorted(state.keys() - total.keys())
            raise AverageError(f'{path} does not match {first}: missing keys {missing[:5]}, extra keys {extra[:5]}')
        for k, v in state.items():
            if v.shape != total[k].shape or v.dtype != dtypes[k]:
                raise AverageError(f'{path} does not match {first}: {k} is {v.dtype} {tuple(v.shape)}, '
                                   f'not {dtypes[k]} {tuple(total[k].shape)}')
            if v.is_floating_point():
                total[k] += v.double()
            elif not torch.equal(v, total[k]):
                raise AverageError(f'{path} does not match {first}: the integer tensor {k} differs')
    return {k: (v / len(paths)).to(dtypes[k]) if v.is_floating_point() else v for k, v in total.items()}


def save_weights(state: dict[str, torch.Tensor], path: str, sources: Sequence[str]) -> None:
    """Write ``state`` to ``path`` atomically: ``.safetensors`` (file names of ``sources`` in its
    metadata) or ``.pth`` (``{'model': state, 'averaged_from': [...]}``)."""
    names = [os.path.basename(s) for s in sources]
    if path.endswith('.safetensors'):
        run_dir.save_safetensors(state, path, {'averaged_from': ','.join(names)})
    else:
        run_dir.atomic_save({'model': state, 'averaged_from': names}, path)


def get_args_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser('avg_checkpoints.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('--input', required=True, help='run folder (main.py --output_dir)')
    parser.add_argument('-n', '--num', type=_positive_int, default=5, help='how many checkpoints (default 5)')
    parser.add_argument('--select', choices=('last', 'best'), default='last',
                        help='last: the newest epochs; best: the best test_acc1 in log.txt (default last)')
    parser.add_argument('--ema', action='store_true', help='average the EMA weights (model_ema) instead')
    parser.add_argument('--output', required=True, help='output file, .safetensors or .pth')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing --output')
    return parser


@exits_on_user_error()
def main(argv: Sequence[str] | None = None) -> int:
    """Average and save; returns the exit status (0 ok, 2 error, with one line on stderr)."""
    args = get_args_parser().parse_args(argv)
    try:
        if not args.output.endswith(('.safetensors', '.pth')):
            raise AverageError(f'--output {args.output} must end in .safetensors or .pth')
        chosen = select_checkpoints(args.input, args.num, args.select, args.ema)
        paths = [p for _, p in chosen]
        if os.path.realpath(args.output) in {os.path.realpath(p) for p in paths}:
            raise AverageError(f'--output {args.output} is one of the checkpoints being averaged; pick another name')
        if os.path.exists(args.output) and not args.overwrite:
            raise AverageError(f'--output {args.output} exists; pass --overwrite to replace it')
        state = average_weights(paths, 'model_ema' if args.ema else 'model')
        save_weights(state, args.output, paths)
    except (AverageError, run_dir.CheckpointError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except OSError as e:
        print(f'error: cannot write {args.output}: {e.strerror or e}', file=sys.stderr)
        return 2
    epochs = ', '.join(str(e) for e, _ in chosen)
    print(f'Averaged {"EMA " if args.ema else ""}weights of {len(chosen)} checkpoints (epochs {epochs}) '
          f'into {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
