"""The GPU device check: every GPU-specific path of the project run once on one CUDA card, with one
report file. ``benchmarks/device_check.sh`` runs it (see benchmarks/GPU.md); ``--dry`` runs the same
steps on the CPU with tiny sizes (CI, so that the check cannot rot).

Steps, each in its own process with its own timeout; a failure is reported and the next step runs:

- ``env``: torch / timm / GPU, timm new enough for ``models``, which TensorBoard writer main.py gets;
- ``equality``: CPU vs CUDA (fp32, TF32 off) forward and backward of HorNet-T 7x7 and GF at 3 input sizes;
- ``opcheck``: ``torch.library.opcheck`` of the GF filter's custom ops (``hornet::*``) on the device;
- ``autocast``: bf16 and fp16 forward and backward finite and close to fp32;
- ``train``: ``main.py --device cuda`` on a generated image folder (EMA + its evaluation, mixup,
  ``--update_freq 2``, ``--channels_last``, ``--grad_ckpt``, bf16), resumed with fp16 + GradScaler +
  ``--clip_grad``, then ``--eval``;
- ``torchrun``: two training processes sharing the GPU (``--dist_backend gloo``);
- ``compile``: ``models.compile_blocks`` (``--compile blocks``) equal to eager, forward and backward;
- ``throughput`` / ``throughput_compile``: benchmarks/throughput.py, HorNet-T/S/B 7x7 and GF next to
  ConvNeXt, bf16 + channels_last, batch 128, train and infer, eager with peak memory; ``--compile
  blocks`` for T;
- ``roofline``: benchmarks/gpu_roofline.py's estimate for the same models (run on the CPU alongside
  the others), printed next to each measured time: measured / estimated is the cost model's
  calibration on this card. Inference rows are estimated warm (``--warm``), as they are measured:
  repeated no-grad forwards run on HorNet's weight cache after the first one.

In ``--dry`` mode the CUDA side of a comparison is the CPU with channels_last tensors (CPU vs CPU),
and the report says so on each such row.

Usage::

    python benchmarks/device_check.py --report device_check.md          # on the GPU machine
    python benchmarks/device_check.py --dry --report /tmp/dry.md        # anywhere
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TIMM_FLOOR = (1, 0, 29)  # timm.layers.get_device_dtype (pyproject.toml)
SIZES = ('tiny', 'small', 'base')
TINY_HORNET = ['depths=1,1,1,1', 'base_dim=16']


class StepFailed(Exception):
    """A check inside a step did not hold: the message goes to the report."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise StepFailed(message)


def _rel_err(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def _setup(dry: bool):
    """The device under test and the reference device, TF32 off (fp32 comparisons)."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if dry:
        return torch.device('cpu'), 'CPU channels_last vs CPU (dry: no CUDA)'
    _require(torch.cuda.is_available(), 'no CUDA device (torch.cuda.is_available() is False)')
    return torch.device('cuda'), f'CUDA ({torch.cuda.get_device_name()}) vs CPU'


def _model(name: str, dry: bool, **kw):
    import timm
    import torch

    import models  # noqa: F401
    torch.manual_seed(0)
    extra = dict(depths=(1, 1, 1, 1), base_dim=16) if dry else {}
    return timm.create_model(name, **extra, **kw)


def _fwd_bwd(model, x):
    import torch
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    (out.float() ** 2).mean().backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach().float().cpu(), x.grad.detach().float().cpu(), grads, torch.isfinite(out).all().item()


# ----------------------------------------------------------------------------- steps

def step_env(dry: bool) -> str:
    import timm
    import torch

    import utils
    version = tuple(int(p) for p in re.findall(r'\d+', timm.__version__)[:3])
    _require(version >= TIMM_FLOOR, f'timm {timm.__version__} < {".".join(map(str, TIMM_FLOOR))}: carry a newer '
             'timm wheel in .whl/ (benchmarks/GPU.md)')
    import main  # noqa: F401  (the training path imports)
    import models  # noqa: F401
    writer, _ = utils.tensorboard_writer_class()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device'
    _require(dry or torch.cuda.is_available(), 'no CUDA device (torch.cuda.is_available() is False)')
    return (f'{gpu}; torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}; '
            f'TensorBoard writer: {writer.__module__}')


def step_equality(dry: bool) -> str:
    import torch
    device, what = _setup(dry)
    sizes = (32, 48, 64) if dry else (64, 112, 224)
    worst = {}
    for name in ('hornet_tiny_7x7', 'hornet_tiny_gf'):
        ref = _model(name, dry)
        dev = copy.deepcopy(ref).to(device)
        if dry:
            dev = dev.to(memory_format=torch.channels_last)
        for size in sizes:
            torch.manual_seed(size)
            x = torch.randn(2, 3, size, size)
            xd = x.to(device).contiguous(memory_format=torch.channels_last) if dry else x.to(device)
            for m in (ref, dev):
                m.zero_grad(set_to_none=True)
            o_ref, gx_ref, g_ref, _ = _fwd_bwd(ref, x)
            o_dev, gx_dev, g_dev, finite = _fwd_bwd(dev, xd)
            _require(finite, f'{name} {size}px: non-finite output on {device}')
            errs = dict(out=_rel_err(o_dev, o_ref), grad_x=_rel_err(gx_dev, gx_ref),
                        grad_w=max(_rel_err(g_dev[k], g_ref[k]) for k in g_ref))
            for k, tol in (('out', 1e-4), ('grad_x', 1e-3), ('grad_w', 1e-3)):
                _require(errs[k] <= tol, f'{name} {size}px: {k} relative error {errs[k]:.2e} > {tol:g} ({what})')
            worst[f'{name} {size}px'] = max(errs.values())
    return f'{what}, fp32 TF32 off, sizes {sizes}: max relative error ' + ', '.join(
        f'{k} {v:.1e}' for k, v in worst.items())


def _opcheck_samples(name: str, device):
    import torch
    x = torch.randn(2, 4, 12, 12, device=device, requires_grad=True)
    w = torch.randn(4, 12, 7, 2, device=device, requires_grad=True)
    if name == 'hornet::global_filter':
        return [(x, w), (x.detach(), w)]
    if name == 'hornet::global_filter_backward':
        spec = torch.view_as_real(torch.fft.rfft2(x.detach(), norm='ortho')).contiguous()
        g = torch.randn(2, 4, 12, 12, device=device)
        return [(g, spec, w.detach(), True, True), (g, spec, w.detach(), True, False),
                (g, spec, w.detach(), False, True)]
    return None


def step_opcheck(dry: bool) -> str:
    import torch
    from torch._library.custom_ops import OPDEFS

    import models  # noqa: F401  (registers the ops)
    device, _ = _setup(dry)
    names = sorted(n for n in OPDEFS if n.startswith('hornet::'))
    _require(bool(names), 'no hornet:: custom ops registered')
    done = []
    for name in names:
        samples = _opcheck_samples(name, device)
        _require(samples is not None, f'{name}: no sample inputs; add them to device_check._opcheck_samples')
        op = getattr(getattr(torch.ops, name.split('::')[0]), name.split('::')[1])
        for args in samples:
            result = torch.library.opcheck(op, args)
            bad = {k: v for k, v in result.items() if v != 'SUCCESS'}
            _require(not bad, f'{name}: {bad}')
        done.append(f'{name} ({len(samples)} samples)')
    return f'on {device}: ' + ', '.join(done)


def step_autocast(dry: bool) -> str:
    import torch
    device, _ = _setup(dry)
    size = 32 if dry else 64
    out = []
    for name in ('hornet_tiny_7x7', 'hornet_tiny_gf'):
        model = _model(name, dry).to(device)
        x = torch.randn(2, 3, size, size, device=device)
        ref, _, _, _ = _fwd_bwd(model, x)
        for dtype, tol in ((torch.bfloat16, 0.1), (torch.float16, 0.05)):
            model.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype):
                o, gx, grads, finite = _fwd_bwd(model, x)
            _require(finite and torch.isfinite(gx).all() and all(torch.isfinite(g).all() for g in grads.values()),
                     f'{name} {dtype}: non-finite output or gradient')
            err = _rel_err(o, ref)
            _require(err <= tol, f'{name} {dtype}: output relative error {err:.2e} > {tol}')
            out.append(f'{name} {str(dtype)[6:]} {err:.1e}')
    return f'on {device}, relative error vs fp32: ' + ', '.join(out)


def _image_folder(root: str) -> str:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (('train', 16), ('val', 8)):
        for c in range(3):
            folder = os.path.join(root, split, f'class_{c}')
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 90, size=(32, 32, 3)).astype(np.uint8)
                img[..., c] += np.uint8(150)
                Image.fromarray(img).save(os.path.join(folder, f'{i:03d}.png'))
    return root


def _main_argv(data: str, out: str, device: str, **over) -> list[str]:
    flags = dict(model='hornet_tiny_gf', depths='1 1 1 1', base_dim=16, input_size=32, nb_classes=3, data_path=data,
                 output_dir=out, device=device, batch_size=8, epochs=1, warmup_epochs=0, lr=2e-3, num_workers=2,
                 aa='none', reprob=0, color_jitter=0, print_freq=2)
    flags.update(over)
    argv = []
    for k, v in flags.items():
        argv += [f'--{k}', *str(v).split()]
    return argv


def _run(cmd: Sequence[str], what: str, timeout: float) -> str:
    r = subprocess.run(list(cmd), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, PYTHONUNBUFFERED='1'))
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
        raise StepFailed(f'{what}: exit {r.returncode}: ' + ' / '.join(tail))
    return r.stdout + r.stderr


def _log(out: str) -> list[dict]:
    with open(os.path.join(out, 'log.txt')) as f:
        return [json.loads(line) for line in f]


def step_train(dry: bool) -> str:
    import math
    device = 'cpu' if dry else 'cuda'
    with tempfile.TemporaryDirectory() as tmp:
        data, out = _image_folder(os.path.join(tmp, 'data')), os.path.join(tmp, 'out')
        main = os.path.join(ROOT, 'main.py')
        first = _main_argv(data, out, device, model_ema='true', model_ema_eval='true', model_ema_decay=0.9,
                           mixup=0.8, cutmix=1.0, update_freq=2, channels_last='true', grad_ckpt='true',
                           use_amp='true', amp_dtype='bf16')
        _run([sys.executable, main, *first], 'training (EMA, mixup, update_freq 2, channels_last, grad_ckpt, '
                    'bf16)', 300)
        resume = _main_argv(data, out, device, epochs=2, use_amp='true', amp_dtype='fp16', clip_grad=1.0,
                            mixup=0, cutmix=0)
        _run([sys.executable, main, *resume], 'resume with fp16 + GradScaler + --clip_grad', 300)
        log = _log(out)
        _require([r['epoch'] for r in log] == [0, 1], f'log.txt epochs {[r["epoch"] for r in log]}, expected [0, 1]')
        _require(all(math.isfinite(r['train_loss']) for r in log), f'non-finite train loss in {log}')
        _require('test_acc1_ema' in log[0], 'no EMA evaluation in log.txt')
        text = _run([sys.executable, main, *_main_argv(data, out, device, eval='true',
                                                          resume=os.path.join(out, 'checkpoint-1.pth'))],
                    '--eval', 120)
        acc = re.findall(r'\* Acc@1 ([\d.]+)', text)
        _require(bool(acc), '--eval printed no Acc@1')
    return (f'{device}: train loss {log[0]["train_loss"]:.3f} -> {log[1]["train_loss"]:.3f}, '
            f'EMA acc {log[0]["test_acc1_ema"]:.1f}, --eval Acc@1 {acc[-1]}')


def step_torchrun(dry: bool) -> str:
    device = 'cpu' if dry else 'cuda'
    with tempfile.TemporaryDirectory() as tmp:
        data, out = _image_folder(os.path.join(tmp, 'data')), os.path.join(tmp, 'out')
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        text = _run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}',
                     os.path.join(ROOT, 'main.py'), *_main_argv(data, out, device, dist_backend='gloo', batch_size=4,
                                                                 mixup=0, cutmix=0, num_workers=1)],
                    'torchrun, 2 processes, gloo', 300)
        _require('parameters on 2 ranks: max |difference| from rank 0 = 0' in text,
                 'ranks ended with different weights (or no comparison line)')
    return f'{device}: 2 processes (gloo) on one {"CPU" if dry else "GPU"}, identical weights on both ranks'


def step_compile(dry: bool) -> str:
    import torch

    import models
    device, _ = _setup(dry)
    out = []
    # dry: GF only (its custom ops are what a compiled graph could get wrong); CPU compiles are slow
    for name in ('hornet_tiny_gf',) if dry else ('hornet_tiny_7x7', 'hornet_tiny_gf'):
        eager = _model(name, True).to(device)  # tiny: compile time, not size, is what is checked
        compiled = models.compile_blocks(copy.deepcopy(eager))
        x = torch.randn(2, 3, 32, 32, device=device)
        o_e, gx_e, g_e, _ = _fwd_bwd(eager, x)
        o_c, gx_c, g_c, _ = _fwd_bwd(compiled, x)
        errs = (_rel_err(o_c, o_e), _rel_err(gx_c, gx_e), max(_rel_err(g_c[k], g_e[k]) for k in g_e))
        _require(max(errs) <= 1e-4, f'{name}: compiled vs eager relative errors {errs}')
        out.append(f'{name} {max(errs):.1e}')
    return f'--compile blocks vs eager on {device} (fp32, TF32 off), max relative error: ' + ', '.join(out)


def _throughput_argv(dry: bool, compile_blocks: bool) -> list[str]:
    if dry:  # one model, one mode: the plumbing, at CPU cost
        names = ['hornet_tiny_gf' if compile_blocks else 'hornet_tiny_7x7']
        common = ['--device', 'cpu', '--batch_size', '1', '--input_size', '32', '--warmup', '1', '--repeats', '1',
                  '--threads', '2']
    else:
        names = ['hornet_tiny_7x7', 'hornet_tiny_gf'] if compile_blocks else \
            [f'hornet_{s}_{k}' for s in SIZES for k in ('7x7', 'gf')]
        common = ['--device', 'cuda', '--batch_size', '128', '--warmup', '3', '--repeats', '10']
    argv = [os.path.join(ROOT, 'benchmarks', 'throughput.py'), '--models', *names, '--amp_dtype', 'bfloat16',
            '--channels_last', *common]
    modes = ['infer' if compile_blocks else 'train'] if dry else ['train', 'infer']
    if compile_blocks:
        return argv + ['--compile', 'blocks', '--baselines', *([] if dry else ['convnext']), 'eager', '--modes', *modes]
    return argv + ['--baselines', 'convnext', '--modes', *modes, '--memory']


def _table(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith('|')]
    if len(lines) < 3:
        return []
    head = [c.strip() for c in lines[0].strip('|').split('|')]
    return [dict(zip(head, (c.strip() for c in line.strip('|').split('|')), strict=False)) for line in lines[2:]]


def _step_throughput(dry: bool, compile_blocks: bool) -> tuple[str, str]:
    text = _run([sys.executable, *_throughput_argv(dry, compile_blocks)], 'benchmarks/throughput.py', 600)
    rows = _table(text)
    _require(bool(rows), 'no table in the output')
    _require(all(float(r['img/s (min-max)'].split()[0]) > 0 for r in rows), 'a row without a rate')
    return f'{len(rows)} rows', text


def step_throughput(dry: bool) -> tuple[str, str]:
    return _step_throughput(dry, False)


def step_throughput_compile(dry: bool) -> tuple[str, str]:
    return _step_throughput(dry, True)


STEPS: dict[str, tuple[Callable, int]] = {  # name: (function, timeout s on the GPU)
    'env': (step_env, 60), 'equality': (step_equality, 120), 'opcheck': (step_opcheck, 90),
    'autocast': (step_autocast, 60), 'train': (step_train, 240), 'torchrun': (step_torchrun, 150),
    'compile': (step_compile, 240), 'throughput': (step_throughput, 300),
    'throughput_compile': (step_throughput_compile, 300),
}


# ----------------------------------------------------------------------------- roofline, report

def _roofline_argv(dry: bool, gpu: str) -> list[str]:
    names = ['hornet_tiny_7x7', 'hornet_tiny_gf', 'convnext_tiny'] if dry else \
        [f'hornet_{s}_{k}' for s in SIZES for k in ('7x7', 'gf')] + [f'convnext_{s}' for s in SIZES]
    size = ['--batch_size', '1', '--input_size', '32'] if dry else ['--batch_size', '128']
    # --warm: throughput.py's inference rows repeat no-grad forwards, which run on HorNet's weight cache
    # after the first one; its training rows are the same warm or cold
    return [os.path.join(ROOT, 'benchmarks', 'gpu_roofline.py'), '--models', *names, *size, '--gpu', gpu,
            '--top', '0', '--warm']


def _gpu_key() -> str:
    import torch
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ''
    return next((k for k in ('h200', 'a100', 'h100') if k in name.lower()), 'h100')


def _measured_vs_estimated(throughput: list[str], roofline: str) -> list[str]:
    est = {(r['model'], r['mode']): r for r in _table(roofline)}
    lines = ['| model | mode | compile | batch | measured ms/step | estimated ms (fwd+bwd) | measured / estimated |',
             '|---|---|---|---|---|---|---|']
    for text in throughput:
        for r in _table(text):
            mode = 'forward' if r['mode'] == 'infer' else 'train'
            e = est.get((r['model'], mode))
            if e is None:
                continue
            ms = 1e3 * int(r['batch']) / float(r['img/s (min-max)'].split()[0])
            est_ms = float(e['est. ms fwd+bwd'])
            lines.append(f'| {r["model"]} | {r["mode"]} | {r["compile"]} | {r["batch"]} | {ms:.2f} | {est_ms:.2f} | '
                         f'{ms / est_ms:.2f} |')
    return lines


def _run_step(name: str, dry: bool, timeout: float) -> dict:
    start = time.time()
    cmd = [sys.executable, os.path.abspath(__file__), '--step', name] + (['--dry'] if dry else [])
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(status='failed', detail=f'timed out after {timeout:.0f} s', seconds=time.time() - start)
    result = None
    for line in reversed(r.stdout.splitlines()):
        if line.startswith('{"status"'):
            result = json.loads(line)
            break
    if result is None:
        tail = ' / '.join((r.stderr.strip() or r.stdout.strip()).splitlines()[-3:])
        result = dict(status='failed', detail=f'exit {r.returncode}: {tail}')
    result['seconds'] = time.time() - start
    return result


def _in_step(name: str, dry: bool) -> int:
    """Run one step in this process; print its result as one JSON line."""
    try:
        out = STEPS[name][0](dry)
        detail, text = out if isinstance(out, tuple) else (out, '')
        result = dict(status='passed', detail=detail, output=text)
    except StepFailed as e:
        result = dict(status='failed', detail=str(e))
    except Exception as e:  # a crash is a failed step, reported with its type
        result = dict(status='failed', detail=f'{type(e).__name__}: {e}'[:500])
    print(json.dumps(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--dry', action='store_true', help='the same steps on the CPU with tiny sizes')
    p.add_argument('--report', default=None, help='report file (default: device_check_<date>.md here)')
    p.add_argument('--budget_s', type=float, default=None,
                   help='start no step after this many seconds (default: 470 on the GPU, 1500 with --dry)')
    p.add_argument('--steps', nargs='+', default=list(STEPS), choices=list(STEPS))
    p.add_argument('--step', default=None, choices=list(STEPS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step:
        return _in_step(args.step, args.dry)
    start = time.time()
    if args.budget_s is None:
        args.budget_s = 1500.0 if args.dry else 470.0
    report = args.report or f'device_check_{datetime.date.today()}.md'
    gpu = 'h100' if args.dry else _gpu_key()
    # the cost model is CPU work: it runs beside the GPU steps (on a GPU machine's spare cores)
    roofline = subprocess.Popen([sys.executable, *_roofline_argv(args.dry, gpu)], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))
    results: dict[str, dict] = {}
    for name in args.steps:
        timeout = STEPS[name][1] * (2 if args.dry else 1)  # CPU steps in CI run slower
        left = args.budget_s - (time.time() - start)
        if left < 10:
            results[name] = dict(status='skipped: time budget spent', detail=f'--budget_s {args.budget_s:.0f}',
                                 seconds=0.0)
            continue
        results[name] = _run_step(name, args.dry, min(timeout, left))
        print(f'{name}: {results[name]["status"]} ({results[name]["seconds"]:.0f} s) {results[name]["detail"]}',
              flush=True)
    try:
        rf_out, rf_err = roofline.communicate(timeout=max(30.0, args.budget_s + 60 - (time.time() - start)))
        rf_ok = roofline.returncode == 0 and bool(_table(rf_out))
        results['roofline'] = dict(status='passed' if rf_ok else 'failed', seconds=time.time() - start,
                                   detail=f'estimates for {gpu}' if rf_ok else ' / '.join(rf_err.splitlines()[-3:]))
    except subprocess.TimeoutExpired:
        roofline.kill()
        rf_out = ''
        results['roofline'] = dict(status='failed', detail='timed out', seconds=time.time() - start)
    print(f'roofline: {results["roofline"]["status"]} {results["roofline"]["detail"]}', flush=True)

    flags = ' '.join(argv if argv is not None else sys.argv[1:])
    title = f'# Device check{" (--dry: CPU, tiny sizes)" if args.dry else ""}'
    lines = [f'{title}, {datetime.datetime.now():%Y-%m-%d %H:%M}',
             '', f'Command: `python benchmarks/device_check.py {flags}` on {socket.gethostname()}; '
             f'{time.time() - start:.0f} s in all.', '',
             '| step | status | s | detail |', '|---|---|---|---|']
    for name, r in results.items():
        lines.append(f'| {name} | {r["status"]} | {r["seconds"]:.0f} | {r["detail"].replace("|", "/")} |')
    throughput = [results[k].get('output', '') for k in ('throughput', 'throughput_compile') if k in results]
    lines += ['', '## Measured vs estimated (benchmarks/gpu_roofline.py, without the optimizer step)', '',
              *_measured_vs_estimated(throughput, rf_out)]
    for k in ('throughput', 'throughput_compile'):
        if results.get(k, {}).get('output'):
            lines += ['', f'## {k}', '', results[k]['output'].strip()]
    if rf_out:
        lines += ['', '## roofline', '', rf_out.strip()]
    with open(report, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    failed = [k for k, r in results.items() if r['status'] != 'passed']
    print(f'report: {report}; ' + (f'not passed: {", ".join(failed)}' if failed else 'all steps passed'))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
