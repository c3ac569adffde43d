"""The documented benchmark commands, run scaled down (tiny input, one repeat), and the CPU allocator
setting that main.py and the benchmark apply."""
import os

import pytest
import torch

from helpers import ROOT, run_python, subprocess_env

THROUGHPUT = os.path.join(ROOT, 'benchmarks', 'throughput.py')


def _table(stdout: str) -> list[dict[str, str]]:
    """The rows of every table in ``stdout`` (one per ``--grad_ckpt`` setting), as dicts by column."""
    lines = [line for line in stdout.splitlines() if line.startswith('|')]
    head_line, rule = lines[:2]
    head = [c.strip() for c in head_line.strip('|').split('|')]
    return [dict(zip(head, (c.strip() for c in line.strip('|').split('|')), strict=True))
            for line in lines if line not in (head_line, rule)]


@pytest.mark.slow
def test_throughput_table_as_documented():
    """`python benchmarks/throughput.py` (default baselines, both modes) at 64 px, batch 1: one row per
    implementation and mode (mmpretrain's HorNet included: CI installs it), each yardstick's ratio to
    itself 1.00, achieved GFLOP/s = 2 x MACs x img/s (x3 for a training step), and the CPU allocator
    line. `--baselines mmpretrain` without mmpretrain is an error that says how to install it."""
    r = run_python([THROUGHPUT, '--models', 'hornet_tiny_7x7', '--batch_size', '1', '--input_size', '64',
                    '--warmup', '1', '--repeats', '1', '--threads', '1'], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '# CPU allocator: freed memory kept for reuse' in r.stdout
    rows = _table(r.stdout)
    names = ('hornet_tiny_7x7', 'reference(hornet_tiny_7x7)', 'mmpretrain(hornet_tiny_7x7)', 'convnext_tiny')
    assert [(row['model'], row['mode']) for row in rows] == [(m, mode) for mode in ('infer', 'train') for m in names]
    for row in rows:
        assert row['x eager'] == '-' and row['compile'] == 'eager'  # no --compile: no eager baseline
        own = {'reference(hornet_tiny_7x7)': 'x ref', 'mmpretrain(hornet_tiny_7x7)': 'x mmp',
               'convnext_tiny': 'x cnx'}.get(row['model'])
        if own:
            assert row[own] == '1.00', row
    import timm

    import calc_flops
    macs = calc_flops.count_flops(timm.create_model('hornet_tiny_7x7'), (64, 64))['total']
    for row in rows:
        if row['model'] == 'hornet_tiny_7x7':
            ips = float(row['img/s (min-max)'].split()[0])
            expected = 2 * macs * (3 if row['mode'] == 'train' else 1) * ips / 1e9
            assert abs(float(row['GFLOP/s']) - expected) <= 0.5 + 0.06 * expected  # img/s is printed rounded
    r = run_python([THROUGHPUT, '--models', 'hornet_tiny_gf', '--batch_size', '1', '--input_size', '64',
                    '--warmup', '1', '--repeats', '1', '--threads', '1', '--modes', 'infer', '--baselines', 'none',
                    '--keep_freed_memory', 'false'], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "# CPU allocator: glibc's default" in r.stdout
    assert [(row['model'], row['mode']) for row in _table(r.stdout)] == [('hornet_tiny_gf', 'infer')]
    hide = ('import os, sys, runpy; sys.modules["mmpretrain"] = None; sys.argv = sys.argv[1:]; '
            'sys.path.insert(0, os.path.dirname(sys.argv[0])); runpy.run_path(sys.argv[0], run_name="__main__")')
    # the script as `python benchmarks/throughput.py` runs it, as if mmpretrain were not installed
    r = run_python(['-c', hide, THROUGHPUT, '--baselines', 'mmpretrain'], timeout=600)
    assert r.returncode == 2 and "--baselines mmpretrain: mmpretrain is not installed; " \
        "'bash tools/install_openmmlab.sh' installs it" in r.stderr, r.stderr[-2000:]


TINY = ['--batch_size', '1', '--input_size', '64', '--warmup', '1', '--repeats', '1', '--threads', '1']


def _run(*flags: str, timeout: float = 900) -> list[dict[str, str]]:
    r = run_python([THROUGHPUT, *flags], timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return _table(r.stdout)


def _assert_bf16_channels_last(row: dict[str, str]) -> None:
    """A row of a `--amp_dtype bfloat16 --channels_last` run: the reference stays float32 NCHW."""
    ref = row['model'].startswith('reference')
    assert (row['dtype'], row['layout']) == (('float32', 'NCHW') if ref else ('bfloat16 autocast', 'channels_last'))


@pytest.mark.slow
def test_throughput_bf16_channels_last_as_documented():
    """`python benchmarks/throughput.py --amp_dtype bfloat16 --channels_last` (default baselines), GF at
    64 px: ours, mmpretrain's HorNet (whose filter mixes a float32 FFT output with bf16 maps) and ConvNeXt
    run under bf16 autocast with channels_last, the reference in float32 NCHW; the rows in order."""
    rows = _run('--amp_dtype', 'bfloat16', '--channels_last', '--models', 'hornet_tiny_gf', *TINY)
    names = ('hornet_tiny_gf', 'reference(hornet_tiny_gf)', 'mmpretrain(hornet_tiny_gf)', 'convnext_tiny')
    assert [(row['model'], row['mode']) for row in rows] == [(m, mode) for mode in ('infer', 'train') for m in names]
    for row in rows:
        _assert_bf16_channels_last(row)
        assert float(row['img/s (min-max)'].split()[0]) > 0


@pytest.mark.slow
def test_throughput_gpu_command_flags_on_cpu():
    """benchmarks/README.md's GPU command (`--amp_dtype bfloat16 --channels_last --memory`, HorNet-S/B next to
    ConvNeXt-S/B) with `--device cpu`, 32 px, batch 1, inference, two of its six models: each HorNet
    size gets the ConvNeXt of its size, every row a peak memory, the reference float32 NCHW."""
    rows = _run('--amp_dtype', 'bfloat16', '--channels_last', '--memory', '--modes', 'infer',
                '--models', 'hornet_small_gf', 'hornet_base_7x7', '--batch_size', '1', '--input_size', '32',
                '--warmup', '1', '--repeats', '1', '--threads', '1')
    assert [row['model'] for row in rows] == [
        'hornet_small_gf', 'reference(hornet_small_gf)', 'mmpretrain(hornet_small_gf)', 'convnext_small',
        'hornet_base_7x7', 'reference(hornet_base_7x7)', 'mmpretrain(hornet_base_7x7)', 'convnext_base']
    for row in rows:
        _assert_bf16_channels_last(row)
        assert float(row['peak mem MiB']) > 0, row


def _check_compiled_rows(rows, names, compile_column) -> None:
    """A ``--compile ... --modes train infer`` table whose last row per mode is the eager baseline:
    the rows in order, the compile column, ``x eager`` 1.00 on the eager row, and a first (compiling)
    warm-up longer than the eager one."""
    assert [(row['model'], row['mode']) for row in rows] == [(m, mode) for mode in ('train', 'infer') for m in names]
    assert [row['compile'] for row in rows] == list(compile_column) * 2
    for compiled, eager in ((rows[0], rows[2]), (rows[3], rows[5])):
        assert eager['x eager'] == '1.00' and compiled['x eager'] != '-'
        wall = [float(r['warm-up s wall / CPU'].split('/')[0]) for r in (compiled, eager)]
        assert wall[0] > wall[1], (compiled, eager)


@pytest.mark.slow
def test_throughput_compile_as_documented():
    """`--compile --modes train infer` with benchmarks/README.md's `--baselines reference eager`, 7x7 at 64 px: our
    model compiled (fullgraph) in both modes next to the same module run eagerly (`x eager` 1.00 on that
    row) and the uncompiled reference; the warm-up, which compiles, takes longer than an eager one."""
    rows = _run('--compile', '--modes', 'train', 'infer', '--models', 'hornet_tiny_7x7',
                '--baselines', 'reference', 'eager', *TINY)
    _check_compiled_rows(rows, ('hornet_tiny_7x7', 'reference(hornet_tiny_7x7)', 'hornet_tiny_7x7'),
                         ('fullgraph', 'eager', 'eager'))


@pytest.mark.slow
def test_throughput_compile_blocks_as_documented():
    """`--compile blocks --modes train infer` (regional compilation), GF at 64 px with the eager and
    ConvNeXt baselines: our blocks through models.compile_blocks and ConvNeXt's blocks alike, labelled
    `blocks`; the eager row is a separate uncompiled copy (compile_blocks works in place), `x eager`
    1.00 there, and the compiling warm-up takes longer than its eager one."""
    rows = _run('--compile', 'blocks', '--modes', 'train', 'infer', '--models', 'hornet_tiny_gf',
                '--baselines', 'convnext', 'eager', *TINY)
    _check_compiled_rows(rows, ('hornet_tiny_gf', 'convnext_tiny', 'hornet_tiny_gf'), ('blocks', 'blocks', 'eager'))
    assert rows[0]['x cnx'] != '-' and rows[1]['x cnx'] == '1.00'


@pytest.mark.slow
def test_throughput_grad_ckpt_memory_as_documented():
    """The documented memory command (`--models hornet_base_7x7 --batch_size 16 --modes train --memory
    --grad_ckpt both --baselines none`), scaled down to HorNet-T, batch 4, 128 px: a table per setting,
    and activation checkpointing lowers the training step's measured peak memory by more than a third."""
    rows = _run('--models', 'hornet_tiny_7x7', '--batch_size', '4', '--input_size', '128', '--modes', 'train',
                '--memory', '--grad_ckpt', 'both', '--baselines', 'none', '--warmup', '1', '--repeats', '1',
                '--threads', '1')
    assert [(row['model'], row['grad ckpt']) for row in rows] == [('hornet_tiny_7x7', 'off'), ('hornet_tiny_7x7', 'on')]
    off, on = (float(row['peak mem MiB']) for row in rows)
    assert on < 0.67 * off, (off, on)


FAULTS = '''
import resource, sys, torch
sys.path.insert(0, {root!r})
import utils
if sys.argv[1] == 'keep':
    assert utils.keep_freed_cpu_memory()
SIZES = {sizes!r}
def step():  # activations of mixed sizes, some freed along the way, the rest at the end
    live = []
    for i, size in enumerate(SIZES):
        live.append(torch.empty(size // 4).fill_(1.0))
        if i % 3 == 0:
            live.pop(0)
faults = []
for _ in range(7):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults[2:])[2])  # the median step after two warm-up steps
'''


def test_keep_freed_cpu_memory_stops_page_faults():
    """utils.keep_freed_cpu_memory (main.py --device cpu, the benchmark): a step's worth of activations
    from 0.25 to 48 MiB (290 MiB in all) page-faults most of its pages in again every step with glibc's
    default (blocks over 32 MiB are always mapped afresh and unmapped when freed), and hardly any with
    the setting (median step after two warm-up steps). Linux/glibc, as CI: elsewhere the setting is
    unavailable and the test fails rather than skips."""
    sizes = [int((0.25 + (i * 7 % 13) / 2) * 2 ** 20) for i in range(40)] + [48 * 2 ** 20, 40 * 2 ** 20, 36 * 2 ** 20]
    code = FAULTS.format(root=ROOT, sizes=sizes)
    faults = {}
    for mode in ('default', 'keep'):
        r = run_python(['-c', code, mode])
        assert r.returncode == 0, r.stderr[-2000:]
        faults[mode] = int(r.stdout.split()[-1])
    pages = sum(sizes) // 4096
    assert faults['default'] > 0.4 * pages, faults
    assert faults['keep'] < 0.01 * pages, faults


def test_throughput_device_cuda_without_gpu_is_an_argparse_error(monkeypatch, capsys):
    """`--device cuda` where torch sees no GPU stops at argument parsing with a one-line reason (exit 2),
    before any model is built or a matmul peak measured; with a GPU it turns on cuDNN's kernel search,
    as main.py does for training (checked with torch.cuda.is_available patched, up to the first
    CUDA call)."""
    from benchmarks import throughput
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    with pytest.raises(SystemExit) as e:
        throughput.main(['--device', 'cuda', '--models', 'hornet_tiny_7x7', '--baselines', 'none'])
    assert e.value.code == 2
    assert '--device cuda: no CUDA device is available (torch.cuda.is_available() is False)' in capsys.readouterr().err
    assert torch.backends.cudnn.benchmark is False

    class Reached(Exception):
        pass

    def peak(device, dtype, n=None, repeats=10):
        raise Reached(device.type)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(throughput, 'matmul_peak', peak)
    with pytest.raises(Reached, match='cuda'):
        throughput.main(['--device', 'cuda', '--models', 'hornet_tiny_7x7', '--baselines', 'none'])
    assert torch.backends.cudnn.benchmark is True


def test_throughput_build_eager_row_is_our_model():
    """The ``eager`` row (``--compile ... --memory``: its memory probe builds the model by kind) is our
    HorNet with our parameter count, not ConvNeXt; an unknown kind is refused."""
    import argparse

    import timm

    import models  # noqa: F401  (registers hornet_*)
    from benchmarks import throughput
    ns = argparse.Namespace(channels_last=False, grad_ckpt_on=False)
    torch.manual_seed(0)
    eager = throughput.build('eager', 'hornet_tiny_7x7', ns, torch.device('cpu'))
    hornet = throughput.build('hornet', 'hornet_tiny_7x7', ns, torch.device('cpu'))
    assert type(eager) is type(hornet) and type(eager).__name__ != 'ConvNeXt'
    n = sum(p.numel() for p in eager.parameters())
    assert n == sum(p.numel() for p in hornet.parameters())
    assert n != sum(p.numel() for p in timm.create_model('convnext_tiny').parameters())
    with pytest.raises(ValueError, match='unknown model kind'):
        throughput.build('convnxt', 'hornet_tiny_7x7', ns, torch.device('cpu'))


ROOFLINE = os.path.join(ROOT, 'benchmarks', 'gpu_roofline.py')
TINY_CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))


def test_roofline_kernel_time_is_the_slowest_of_compute_memory_and_launch():
    """The cost model's per-kernel estimate, by hand: 2 GFLOP of bf16 products on a 100 TFLOP/s,
    1 TB/s card take 20 us (compute-bound); 30 MB moved take 30 us (memory-bound); an fp32 product in
    TF32 uses the TF32 peak, a depthwise conv the CUDA-core peak; a tiny kernel costs its launches."""
    from benchmarks.gpu_roofline import GPU, Kernel, kernel_time
    gpu = GPU('test', dict(bf16=100e12, fp16=100e12, tf32=50e12), dict(fp32=10e12, bf16=20e12), 1e12, 5e-6)

    def k(flops, read, written, peak, launches=1):
        return Kernel('aten.mm', 'forward', (1,), 'bf16', flops, read, written, False, launches, peak)
    assert kernel_time(k(2e9, 1e6, 1e6, 'tensor:bf16'), gpu) == pytest.approx(20e-6)
    assert kernel_time(k(2e9, 1e6, 1e6, 'tensor:tf32'), gpu) == pytest.approx(40e-6)
    assert kernel_time(k(2e9, 1e6, 1e6, 'simt:bf16'), gpu) == pytest.approx(100e-6)
    assert kernel_time(k(1e6, 20e6, 10e6, 'tensor:bf16'), gpu) == pytest.approx(30e-6)
    assert kernel_time(k(0, 1e6, 1e6, 'tensor:bf16'), gpu) == pytest.approx(5e-6)  # launch-bound
    assert kernel_time(k(0, 8, 8, '', launches=3), gpu) == pytest.approx(15e-6)


def test_roofline_flops_match_the_flop_counter_and_casts_follow_autocast():
    """A conv model's forward on fake CUDA tensors has the FLOPs torch's FLOP counter counts for the
    same forward on the CPU; in fp32 there is no cast, under bf16 autocast every product's weights
    and input are cast (``_to_copy`` to another dtype) and the products run at the bf16 peak."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.gpu_roofline import trace_step
    torch.manual_seed(0)
    model = timm.create_model('convnext_tiny', **TINY_CONVNEXT).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    fp32 = trace_step('convnext_tiny', 'forward', 2, 64, amp_dtype=None, channels_last=False,
                      model_kwargs=TINY_CONVNEXT)
    assert sum(k.flops for k in fp32.kernels) == counter.get_total_flops() > 0
    assert sum(k.cast for k in fp32.kernels) == 0
    assert {k.peak for k in fp32.kernels if k.flops and k.op == 'aten.addmm'} == {'tensor:tf32'}
    bf16 = trace_step('convnext_tiny', 'forward', 2, 64, amp_dtype=torch.bfloat16, channels_last=True,
                      model_kwargs=TINY_CONVNEXT)
    assert sum(k.flops for k in bf16.kernels) == counter.get_total_flops()
    casts = [k for k in bf16.kernels if k.cast]
    products = [k for k in bf16.kernels if k.op in ('aten.addmm', 'aten.convolution')]
    assert len(casts) >= len(products) > 0 and all(k.op == 'aten._to_copy' for k in casts)
    assert {k.peak for k in products if k.op == 'aten.addmm'} == {'tensor:bf16'}
    assert all(k.read > 0 and k.written > 0 for k in products)


def test_roofline_warm_forward_drops_cached_casts_and_precast_drops_convnext_casts():
    """``warm``: HorNet's second forward has no weight-side kernel left (the weight cache) and fewer
    casts, the same FLOPs; ConvNeXt (autocast casts every forward) is the same warm or cold, and with
    its Conv2d/Linear weights pre-cast (``precast``) its weight casts go, the norms' float32 stays."""
    from benchmarks.gpu_roofline import trace_step
    hk = dict(depths=(1, 1, 1, 1), base_dim=16, gf_sizes=(None, None, (2, 2), (1, 1)))
    cold, warm = (trace_step('hornet_tiny_gf', 'forward', 2, 32, model_kwargs=hk, warm=w) for w in (False, True))
    assert sum(k.weight_side for k in cold.kernels) > 40 and sum(k.weight_side for k in warm.kernels) == 0
    assert sum(k.flops for k in warm.kernels) == sum(k.flops for k in cold.kernels)
    # left: the input image's cast and the float32 input of each of the 2 GF blocks' FFT
    assert sum(k.cast for k in warm.kernels) == 3
    c_cold, c_warm, c_pre = (trace_step('convnext_tiny', 'forward', 2, 32, model_kwargs=TINY_CONVNEXT, warm=w,
                                        precast=p) for w, p in ((False, False), (True, False), (True, True)))
    assert [(k.op, k.cast) for k in c_warm.kernels] == [(k.op, k.cast) for k in c_cold.kernels]
    assert sum(k.weight_side for k in c_pre.kernels) < sum(k.weight_side for k in c_cold.kernels)
    assert not [k for k in c_pre.kernels if k.cast and k.weight_side and k.dtype == 'bf16']


@pytest.mark.slow
def test_roofline_cli_totals_ratios_and_top_writers():
    """The cost model's command on a tiny HorNet-T GF and ConvNeXt-T: a row per model and mode with
    positive kernels, casts and estimated ms; a training step has more kernels than a forward (the
    backward and AdamW); the x convnext column is the ratio of the estimated times, repeated in the
    ratio line; the top writers are listed per model and mode."""
    r = run_python([ROOFLINE, '--models', 'hornet_tiny_gf', 'convnext_tiny', '--batch_size', '2', '--input_size', '32',
                    '--hornet_kwargs', 'depths=1,1,1,1', 'base_dim=16', '--convnext_kwargs', 'depths=1,1,1,1',
                    'dims=16,32,64,128', '--top', '3'], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'an ESTIMATE (not a measurement): NVIDIA H100 SXM, 989 TFLOP/s bf16, 3.35 TB/s, 5 us per launch' in r.stdout
    rows = {(row['model'], row['mode']): row for row in _table(r.stdout)}
    assert set(rows) == {(m, mode) for m in ('hornet_tiny_gf', 'convnext_tiny') for mode in ('forward', 'train')}
    for row in rows.values():
        assert int(row['kernels']) > 0 and int(row['casts']) > 0 and float(row['est. ms']) > 0
    for m in ('hornet_tiny_gf', 'convnext_tiny'):
        assert int(rows[(m, 'train')]['kernels']) > 2 * int(rows[(m, 'forward')]['kernels'])
    for mode in ('forward', 'train'):
        ratio = float(rows[('hornet_tiny_gf', mode)]['est. ms']) / float(rows[('convnext_tiny', mode)]['est. ms'])
        assert float(rows[('hornet_tiny_gf', mode)]['x convnext']) == pytest.approx(ratio, rel=0.02)  # ms rounded
        assert f'hornet_tiny_gf {mode} {rows[("hornet_tiny_gf", mode)]["x convnext"]}x' in r.stdout
    assert r.stdout.count('## top writers:') == 4


def _run_bash(args, timeout=1900):
    import subprocess
    return subprocess.run(['bash', *args], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


DEVICE_CHECK_STEPS = ['env', 'equality', 'opcheck', 'autocast', 'train', 'torchrun', 'compile', 'throughput',
                      'throughput_compile', 'roofline']


@pytest.mark.slow
def test_device_check_dry_run_passes_every_step(tmp_path):
    """`bash benchmarks/device_check.sh --dry REPORT` (the GPU check's steps on the CPU, tiny sizes)
    exits 0 and its report lists every step as passed, the CUDA comparisons marked as CPU vs CPU, and
    a measured time next to the cost model's estimate for each throughput row."""
    report = tmp_path / 'report.md'
    r = _run_bash([os.path.join(ROOT, 'benchmarks', 'device_check.sh'), '--dry', str(report)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = report.read_text()
    rows = {row['step']: row for row in _table(text.split('## Measured vs estimated')[0])}
    assert list(rows) == DEVICE_CHECK_STEPS
    assert all(row['status'] == 'passed' for row in rows.values()), rows
    assert 'CPU channels_last vs CPU (dry: no CUDA)' in rows['equality']['detail']
    assert 'hornet::global_filter' in rows['opcheck']['detail']
    measured = _table(text.split('## Measured vs estimated')[1].split('\n## ')[0])
    assert {(m['model'], m['mode'], m['compile']) for m in measured} >= {
        ('hornet_tiny_7x7', 'train', 'eager'), ('hornet_tiny_gf', 'infer', 'blocks')}
    assert all(float(m['measured / estimated']) > 0 for m in measured)
