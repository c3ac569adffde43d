"""HorNet throughput next to its yardsticks, measured side by side in one run: one table per run.

For each HorNet variant the table has a row per implementation and mode (``infer``: forward under
``no_grad`` in eval mode; ``train``: forward + backward of a mean loss in train mode):

- ``hornet``: this repo's model (``timm.create_model(name)``) with the run's settings
  (``--amp_dtype``, ``--channels_last``, ``--compile`` for the whole model or ``--compile blocks``
  for each block on its own, ``models.compile_blocks``);
- ``reference``: the straightforward formulation of the original release, written from the
  architecture specification (``benchmarks/reference_hornet.py``), same weights, always float32,
  NCHW, eager: the "original" the goals are stated against;
- ``mmpretrain``: mmpretrain's HorNet classifier (``benchmarks/mmpretrain_hornet.py``), same
  architecture, same weights, same settings as ``hornet``; by default only where mmpretrain is
  installed (``bash tools/install_openmmlab.sh`` installs it);
- ``convnext``: timm's ConvNeXt of the same size (tiny/small/base/large), same settings as ``hornet``;
- ``eager`` (with ``--compile``): this repo's model, same settings, not compiled.

Columns: images/s (median over ``--repeats`` timed iterations after ``--warmup``; the
implementations take turns iteration by iteration, so machine load hits them alike), achieved
GFLOP/s (2 FLOPs per multiply-add of the model's forward, x3 for a training step), the fraction of
the dense-matmul peak this script measures on the device at the run's dtype, peak memory of one
step (``--memory``; CPU: peak RSS of a fresh subprocess running the step, minus its RSS before the
step; CUDA: ``max_memory_allocated``), and the ratios ``x ref`` (img/s over the reference's),
``x mmp`` (over mmpretrain's HorNet's), ``x cnx`` (over ConvNeXt's) and ``x eager`` (over the
uncompiled model's). ``warm-up s`` is the
wall / CPU time of the warm-up iterations (with ``--compile``: the compilation; CPU time includes
the compiler subprocesses).

On CPU the run keeps freed memory for reuse, as ``main.py --device cpu`` does (``utils.keep_freed_cpu_memory``;
``--keep_freed_memory false`` measures glibc's default, which page-faults every large activation in again).

Examples::

    python benchmarks/throughput.py                                  # fp32 eager, NCHW input
    python benchmarks/throughput.py --amp_dtype bfloat16 --channels_last
    python benchmarks/throughput.py --compile --modes train infer
    python benchmarks/throughput.py --compile blocks --modes train infer
    python benchmarks/throughput.py --models hornet_base_7x7 --batch_size 16 --modes train \\
        --memory --grad_ckpt both --baselines none
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import timm
import torch
import torch.nn as nn

if not __package__:  # run as a file: see _repo_root.py
    import _repo_root  # noqa: F401

import calc_flops
import models  # noqa: F401  (registers hornet_*)
import utils
from benchmarks.mmpretrain_hornet import INSTALL_HINT, mmpretrain_available, mmpretrain_from
from benchmarks.reference_hornet import reference_from

DTYPES = {'none': None, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 10) -> float:
    """Dense matmul GFLOP/s at ``dtype`` on ``device``: the fastest of ``repeats`` (a peak; on a shared
    machine the median would count the other jobs' load as the device's). ``n`` x ``n`` operands:
    2048 on CPU; 8192 on GPUs, where a 2048 product is too short to reach the peak."""
    n = n or (8192 if device.type == 'cuda' else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times[1:]) / 1e9


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (inductor's compiler runs): unlike wall
    time, it does not grow when other jobs share the machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def convnext_for(name: str) -> str:
    size = name.split('_')[1]
    return f'convnext_{size}'


def make_step(model: nn.Module, x: torch.Tensor, mode: str, amp_dtype: torch.dtype | None) -> Callable[[], None]:
    model.train(mode == 'train')
    device_type = x.device.type

    def step():
        with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            if mode == 'infer':
                with torch.no_grad():
                    model(x)
            else:
                model(x).float().mean().backward()
        if mode == 'train':
            for p in model.parameters():
                p.grad = None
        sync(x.device)
    return step


def build(kind: str, name: str, args, device: torch.device, ours: nn.Module | None = None) -> nn.Module:
    # 'eager' (the uncompiled row next to --compile) is our model too: the memory probe builds it by kind
    if kind in ('hornet', 'eager'):
        model = timm.create_model(name)
        if args.grad_ckpt_on:
            model.set_grad_checkpointing(True)
    elif kind == 'reference':
        return reference_from(ours).to(device)
    elif kind == 'mmpretrain':
        model = mmpretrain_from(ours)
        model.classifier.backbone.with_cp = args.grad_ckpt_on
    elif kind == 'convnext':
        model = timm.create_model(convnext_for(name))
        if args.grad_ckpt_on:
            model.set_grad_checkpointing(True)
    else:
        raise ValueError(f'unknown model kind {kind!r}')
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def memory_probe(spec: dict) -> dict:
    """Run in a fresh process: peak RSS growth (CPU) or max allocated (CUDA) of one step, in MiB."""
    torch.set_num_threads(spec['threads'])
    if spec['device'] == 'cpu' and spec['keep_freed_memory']:
        utils.keep_freed_cpu_memory()
    device = torch.device(spec['device'])
    ns = argparse.Namespace(channels_last=spec['channels_last'], grad_ckpt_on=spec['grad_ckpt'])
    ours = timm.create_model(spec['name'])
    model = build(spec['kind'], spec['name'], ns, device, ours)
    del ours
    x = torch.randn(spec['batch'], 3, spec['size'], spec['size'], device=device)
    if spec['channels_last']:
        x = x.contiguous(memory_format=torch.channels_last)
    step = make_step(model, x, spec['mode'], DTYPES[spec['amp_dtype']] if spec['kind'] != 'reference' else None)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        return dict(mib=(torch.cuda.max_memory_allocated() - base) / 2 ** 20)

    def rss(field: str) -> int:
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field))  # kB
    before = rss('VmRSS:')
    step()
    return dict(mib=(rss('VmHWM:') - before) / 1024)


def measure_memory(kind: str, name: str, mode: str, args) -> float:
    spec = dict(kind=kind, name=name, mode=mode, device=args.device, batch=args.batch_size, size=args.input_size,
                channels_last=args.channels_last, amp_dtype=args.amp_dtype, grad_ckpt=args.grad_ckpt_on,
                threads=torch.get_num_threads(), keep_freed_memory=args.keep_freed_memory)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), '--_memory_probe', json.dumps(spec)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])['mib']


COMPILE_LABEL = {'model': 'fullgraph', 'blocks': 'blocks'}  # the table's compile column


def compile_blocks_of(model: nn.Module) -> None:
    """``--compile blocks``: :func:`models.compile_blocks` (what users call) on the modules whose class
    name ends in ``Block``: our ``HorBlock``, timm's ``ConvNeXtBlock``, mmpretrain's ``HorNetBlock``."""
    types = tuple({type(m) for m in model.modules() if type(m).__name__.endswith('Block')})
    if not types:
        raise ValueError(f'--compile blocks: {type(model).__name__} has no module named *Block')
    models.compile_blocks(model, block_types=types)


def run_model(name: str, args, device: torch.device, peaks: dict[str, float]) -> list[dict]:
    kinds = ['hornet'] + [k for k in ('reference', 'mmpretrain', 'convnext') if k in args.baselines]
    label = {'hornet': name, 'eager': name, 'reference': f'reference({name})', 'mmpretrain': f'mmpretrain({name})',
             'convnext': convnext_for(name)}
    if args.memory_only:  # each measurement in its own process: nothing to build here
        return [dict(model=label[k], mode=mode, mem=measure_memory(k, name, mode, args))
                for mode in args.modes for k in kinds]
    torch.manual_seed(0)
    ours = build('hornet', name, args, device)
    nets = {'hornet': ours}
    for k in kinds[1:]:
        nets[k] = build(k, name, args, device, ours)
    if args.compile and 'eager' in args.baselines:
        kinds.append('eager')
        # the same module, run without the compiled wrapper; --compile blocks compiles in place, so a copy
        nets['eager'] = copy.deepcopy(ours) if args.compile == 'blocks' else ours
    macs = {k: calc_flops.count_flops(timm.create_model(name if k != 'convnext' else convnext_for(name)),
                                      (args.input_size, args.input_size))['total'] for k in kinds}
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last) if args.channels_last else x
    compiled = {k: bool(args.compile) and k not in ('reference', 'eager') for k in kinds}
    if args.compile == 'blocks':
        for k in kinds:
            if compiled[k]:
                compile_blocks_of(nets[k])
    rows = []
    for mode in args.modes:
        steps, compile_s = {}, {}
        for k in kinds:
            fast = k != 'reference'
            model = nets[k]
            if compiled[k] and args.compile == 'model':
                model = torch.compile(model, fullgraph=True)
            steps[k] = make_step(model, x_cl if fast else x, mode, args.amp if fast else None)
            t, c = time.perf_counter(), cpu_seconds()
            for _ in range(args.warmup):  # includes compilation
                steps[k]()
            compile_s[k] = (time.perf_counter() - t, cpu_seconds() - c)
        times = {k: [] for k in kinds}
        for _ in range(args.repeats):
            for k in kinds:
                t = time.perf_counter()
                steps[k]()
                times[k].append(time.perf_counter() - t)
        rate = {k: args.batch_size / statistics.median(times[k]) for k in kinds}
        for k in kinds:
            fast = k != 'reference'
            flops = 2 * macs[k] * (3 if mode == 'train' else 1) * rate[k]
            peak = peaks['amp' if fast and args.amp else 'fp32']
            rows.append(dict(
                model=label[k],
                mode=mode, dtype=f'{args.amp_dtype} autocast' if fast and args.amp else 'float32',
                layout='channels_last' if fast and args.channels_last else 'NCHW',
                compile=COMPILE_LABEL[args.compile] if compiled[k] else 'eager', batch=args.batch_size, ips=rate[k],
                gflops=flops / 1e9, peak_frac=flops / 1e9 / peak,
                spread=(min(times[k]), max(times[k])), warmup_s=compile_s[k],
                mem=measure_memory(k, name, mode, args) if args.memory else None,
                x_ref=rate[k] / rate['reference'] if 'reference' in rate else None,
                x_mmp=rate[k] / rate['mmpretrain'] if 'mmpretrain' in rate else None,
                x_cnx=rate[k] / rate['convnext'] if 'convnext' in rate else None,
                x_eager=rate[k] / rate['eager'] if 'eager' in rate else None))
    return rows


def fmt(v, spec: str = '.2f') -> str:
    return '-' if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=['hornet_tiny_7x7', 'hornet_tiny_gf'])
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--input_size', type=int, default=224)
    p.add_argument('--modes', nargs='+', default=['infer', 'train'], choices=['infer', 'train'])
    p.add_argument('--amp_dtype', default='none', choices=list(DTYPES),
                   help='autocast dtype for hornet/mmpretrain/convnext')
    p.add_argument('--channels_last', action='store_true', help='channels_last input and weights')
    p.add_argument('--compile', nargs='?', const='model', default='', choices=['model', 'blocks'],
                   help='torch.compile hornet, mmpretrain and convnext with fullgraph=True: the whole model '
                        '(no value or model), or each block on its own (blocks; models.compile_blocks)')
    p.add_argument('--grad_ckpt', default='off', choices=['off', 'on', 'both'],
                   help='activation checkpointing for hornet/mmpretrain/convnext (both: a table for each)')
    p.add_argument('--baselines', nargs='*', default=None,
                   choices=['reference', 'mmpretrain', 'convnext', 'eager', 'none'],
                   help='rows next to hornet (eager: the uncompiled model, with --compile); default: all, '
                        'mmpretrain where it is installed')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: leave as is)')
    p.add_argument('--keep_freed_memory', default='true', choices=['true', 'false'],
                   help='CPU: keep freed memory for reuse, as main.py does (false: glibc default)')
    p.add_argument('--memory', action='store_true', help='also measure the peak memory of one step')
    p.add_argument('--memory_only', action='store_true', help='only the peak memory column (no timing)')
    p.add_argument('--_memory_probe', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.keep_freed_memory = args.keep_freed_memory == 'true'
    if args._memory_probe:
        print(json.dumps(memory_probe(json.loads(args._memory_probe))))
        return
    has_mmp = mmpretrain_available()
    if args.baselines is None:
        args.baselines = ['reference', 'convnext', 'eager'] + (['mmpretrain'] if has_mmp else [])
    elif 'mmpretrain' in args.baselines and not has_mmp:
        p.error(f'--baselines mmpretrain: {INSTALL_HINT}')
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            p.error('--device cuda: no CUDA device is available (torch.cuda.is_available() is False)')
        torch.backends.cudnn.benchmark = True  # as main.py trains: cuDNN picks its fastest kernels
    kept = device.type == 'cpu' and args.keep_freed_memory and utils.keep_freed_cpu_memory()
    args.amp = DTYPES[args.amp_dtype]
    peaks = {'fp32': matmul_peak(device, torch.float32) if not args.memory_only else float('nan')}
    peaks['amp'] = matmul_peak(device, args.amp) if args.amp and not args.memory_only else peaks['fp32']
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    cpu = torch.cuda.get_device_name() if device.type == 'cuda' else f'{os.cpu_count()} CPU cores'
    print(f'# {cpu}, torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, '
          f'{args.input_size}px, load average at start {load:.1f}')
    print(f'# measured matmul peak: fp32 {peaks["fp32"]:.0f} GFLOP/s' +
          (f', {args.amp_dtype} {peaks["amp"]:.0f} GFLOP/s' if args.amp else ''))
    if device.type == 'cpu':
        print('# CPU allocator: ' + ('freed memory kept for reuse (utils.keep_freed_cpu_memory)' if kept
                                     else "glibc's default (freed large blocks go back to the OS)"))
    print('# reference = original formulation (fp32, NCHW, eager); mmpretrain = mmpretrain\'s HorNet, same weights and '
          'settings as ours' + ('' if has_mmp else ' (not installed: no rows)') +
          '; x ref / x mmp / x cnx = img/s ratio to reference / mmpretrain / ConvNeXt (same settings)')
    for ckpt in ([False, True] if args.grad_ckpt == 'both' else [args.grad_ckpt == 'on']):
        args.grad_ckpt_on = ckpt
        print('\n| model | mode | dtype | layout | compile | grad ckpt | batch | img/s (min-max) | GFLOP/s | '
              'of peak | peak mem MiB | warm-up s wall / CPU | x ref | x mmp | x cnx | x eager |')
        print('|---' * 16 + '|')
        for name in args.models:
            for r in run_model(name, args, device, peaks):
                if args.memory_only:
                    print(f"| {r['model']} | {r['mode']} | {args.amp_dtype} | "
                          f"{'channels_last' if args.channels_last else 'NCHW'} | eager | {'on' if ckpt else 'off'} | "
                          f"{args.batch_size} | - | - | - | {r['mem']:.0f} | - | - | - | - | - |", flush=True)
                    continue
                lo, hi = (args.batch_size / t for t in reversed(r['spread']))
                print(f"| {r['model']} | {r['mode']} | {r['dtype']} | {r['layout']} | {r['compile']} | "
                      f"{'on' if ckpt else 'off'} | {r['batch']} | {r['ips']:.1f} ({lo:.1f}-{hi:.1f}) | "
                      f"{r['gflops']:.0f} | {r['peak_frac']:.0%} | {fmt(r['mem'], '.0f')} | "
                      f"{r['warmup_s'][0]:.0f} / {r['warmup_s'][1]:.0f} | "
                      f"{fmt(r['x_ref'])} | {fmt(r['x_mmp'])} | {fmt(r['x_cnx'])} | {fmt(r['x_eager'])} |", flush=True)


if __name__ == '__main__':
    main()
