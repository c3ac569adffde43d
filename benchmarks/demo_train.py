"""Benchmark of the README's demo job: train a small HorNet on the demo digits on CPU and check
the bar (>= 90% validation top-1 within 5 minutes of wall time).

Runs ``main.py`` exactly as the README does (starting over in the output folder with
``--auto_resume false --overwrite true``, which removes only a previous run's checkpoints and
log.txt), measures wall time from process start to exit (data export, model build, training, evaluation and checkpoints
included), reads ``log.txt`` and prints a table. The machine's load average is printed too,
since other processes sharing the cores slow the run down.

    python benchmarks/demo_train.py [--output_dir DIR] [--keep] [-- extra main.py flags]
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the README's demo command (without the install step)
DEMO_FLAGS = (
    '--data_set DEMO --data_path ./output/demo_data --model hornet_tiny_gf --depths 1 1 2 1 --base_dim 24 '
    '--input_size 32 --batch_size 64 --epochs 5 --warmup_steps 30 --lr 4e-3 --mixup 0 --cutmix 0 '
    '--aa none --reprob 0 --hflip 0 --num_workers 0 --device cpu'
)
TARGET_ACC, TARGET_SECONDS = 90.0, 300.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--output_dir', default=os.path.join(ROOT, 'output', 'demo_bench'))
    p.add_argument('--keep', action='store_true',
                   help='continue a previous run in --output_dir instead of starting over')
    p.add_argument('extra', nargs='*', help='extra main.py flags (after --)')
    args = p.parse_args()
    # start over through main.py's --overwrite, which removes only a previous run's checkpoints and
    # log.txt (never the folder or anything else in it)
    fresh = [] if args.keep else ['--auto_resume', 'false', '--overwrite', 'true']
    cmd = [sys.executable, 'main.py', *shlex.split(DEMO_FLAGS), '--output_dir', args.output_dir, *fresh, *args.extra]
    print('$ ' + ' '.join(shlex.quote(c) for c in cmd[1:]), flush=True)
    load_before = os.getloadavg()
    start = time.time()
    # as in the README: one OpenMP thread (spinning threads on shared cores cost far more than they give)
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1')))
    wall = time.time() - start
    load_after = os.getloadavg()
    if proc.returncode != 0:
        print(f'main.py failed with exit code {proc.returncode}')
        return proc.returncode
    with open(os.path.join(args.output_dir, 'log.txt')) as f:
        log = [json.loads(line) for line in f]
    final, best = log[-1]['test_acc1'], max(r['test_acc1'] for r in log)
    ok = final >= TARGET_ACC and wall <= TARGET_SECONDS
    rows = [('epochs', str(len(log))),
            ('val top-1 per epoch (%)', ' '.join(f'{r["test_acc1"]:.1f}' for r in log)),
            ('final val top-1 (%)', f'{final:.2f}'), ('best val top-1 (%)', f'{best:.2f}'),
            ('wall time (s)', f'{wall:.1f}'),
            ('cpu cores / torch threads', f'{os.cpu_count()} / {os.environ.get("OMP_NUM_THREADS", "1")}'),
            ('load average before / after (1 min)', f'{load_before[0]:.2f} / {load_after[0]:.2f}'),
            (f'>= {TARGET_ACC:.0f}% top-1 in <= {TARGET_SECONDS / 60:.0f} min', 'YES' if ok else 'NO')]
    width = max(len(k) for k, _ in rows)
    print()
    print(f'| {"metric".ljust(width)} | value |')
    print(f'| {"-" * width} | ----- |')
    for k, v in rows:
        print(f'| {k.ljust(width)} | {v} |')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
