"""Step checkpoints and exact mid-epoch resume: a run stopped (SIGTERM) or killed (SIGKILL, with
--save_every_minutes) inside an epoch and rerun with the same command ends with the weights of an
uninterrupted run, bit for bit; the step checkpoint's files, position and pruning; a changed launch
shape resumes at the same sample or is refused in one line."""
import os
import random
import signal
import subprocess
import sys

import pytest
import torch

import datasets
import run_dir
from helpers import (
    MAIN,
    ROOT,
    free_port,
    make_image_folder,
    read_log,
    run_python,
    stop_inside_epoch_1,
    subprocess_env,
    tensorboard_events,
    tiny_argv,
)

# every source of randomness on: mixup, cutmix, RandAugment, random erasing, crops/flips, drop path,
# EMA, and an accumulation window the stop must not cut
HEAVY = dict(mixup=0.8, cutmix=1.0, smoothing=0.1, drop_path=0.1, model_ema='true', model_ema_decay=0.9,
             update_freq=2, aa='rand-m9-mstd0.5-inc1', reprob=0.25, hflip=0.5, batch_size=4, print_freq=1)
BATCHES = 12  # 48 images / batch 4 on one process (6 optimizer steps)


def _weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _loss_curve(folder):
    """(step, value) of TensorBoard's loss/loss as TensorBoard shows it: a purge marker (a resumed
    writer's purge_step) hides what earlier files logged from that step on."""
    points = []
    for ev in tensorboard_events(folder):
        if ev.HasField('session_log') and ev.session_log.status == ev.session_log.START:
            points = [p for p in points if p[0] < ev.step]
        points += [(ev.step, v.simple_value) for v in ev.summary.value if v.tag == 'loss/loss']
    return sorted(points)


def _assert_same_weights(a_dir, b_dir):
    a, b = _weights(f'{a_dir}/checkpoint-1.pth'), _weights(f'{b_dir}/checkpoint-1.pth')
    for part in ('model', 'model_ema'):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert all(torch.equal(sa[i]['exp_avg'], sb[i]['exp_avg']) for i in sa)
    assert read_log(a_dir) == read_log(b_dir)  # every number of every epoch, running metrics included


@pytest.mark.slow
@pytest.mark.parametrize('workers', [0, 2])
def test_sigterm_inside_epoch_resumes_bit_for_bit(data, tmp_path, workers):
    """SIGTERM at a random batch of epoch 1 of 2: exit 143 after a step checkpoint at the next optimizer
    step (never inside the --update_freq window); rerunning the command reads only the rest of the epoch
    and ends with the uninterrupted run's model, EMA, optimizer state and log.txt, bit for bit."""
    straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
    extra = dict(HEAVY, num_workers=workers)
    assert run_python([MAIN, *tiny_argv(data, straight, **extra)], timeout=240).returncode == 0
    at = random.Random(workers).randrange(1, BATCHES - 3)
    argv = tiny_argv(data, stopped, **extra)
    code, out = stop_inside_epoch_1([sys.executable, MAIN, *argv], signal.SIGTERM, at)
    assert code == 143, out[-3000:]
    assert 'terminated (SIGTERM); rerun the same command to resume' in out
    step = _weights(f'{stopped}/{run_dir.STEP_NAME}')
    position = step['step']
    assert position['epoch'] == 1 and step['epoch'] == 0
    assert position['batch'] % 2 == 0 and at < position['batch'] <= BATCHES  # at an optimizer-step boundary
    assert position['global_step'] == 6 + position['batch'] // 2
    assert position['samples'] == position['batch'] * 4 and len(position['ranks']) == 1
    assert {'rng', 'metrics'} <= set(position['ranks'][0]) and 'model_ema' in step and 'scaler' in step
    assert not os.path.exists(f'{stopped}/checkpoint-1.pth') and len(read_log(stopped)) == 1

    rerun = run_python([MAIN, *argv], timeout=240)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-2000:]
    assert f'continuing epoch 1 at batch {position["batch"]} (sample {position["batch"] * 4} of' in rerun.stdout
    assert 'Epoch: [0]' not in rerun.stdout
    left = BATCHES - position['batch']  # only the rest of the epoch is read
    assert rerun.stdout.count('Epoch: [1] [') == left  # a progress line per batch (--print_freq 1)
    _assert_same_weights(straight, stopped)
    assert _loss_curve(stopped) == _loss_curve(straight)  # each micro-batch once, same values
    assert [p[0] for p in _loss_curve(stopped)] == list(range(2 * BATCHES))
    files = sorted(os.listdir(stopped))
    assert run_dir.STEP_NAME not in files  # pruned once checkpoint-1 was written
    assert not [f for f in files if f.startswith('.tmp-')]


@pytest.mark.slow
@pytest.mark.parametrize('workers', [0, 2])
def test_sigkill_with_save_every_minutes_resumes_bit_for_bit(data, tmp_path, workers):
    """kill -9 inside epoch 1 with --save_every_minutes small (a step checkpoint at every step): the
    rerun continues from the newest step checkpoint and ends bit for bit as the uninterrupted run."""
    straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
    extra = dict(HEAVY, num_workers=workers, save_every_minutes=1e-6)
    assert run_python([MAIN, *tiny_argv(data, straight, **extra)], timeout=240).returncode == 0
    argv = tiny_argv(data, killed, **extra)
    at = random.Random(9 + workers).randrange(3, BATCHES - 2)
    code, out = stop_inside_epoch_1([sys.executable, MAIN, *argv], signal.SIGKILL, at, wait_for_step_file=True)
    assert code == -signal.SIGKILL, out[-3000:]
    position = _weights(f'{killed}/{run_dir.STEP_NAME}')['step']
    assert position['epoch'] == 1 and 0 < position['batch'] < BATCHES
    assert run_dir.find_latest(killed) == (f'{killed}/{run_dir.STEP_NAME}', 0)
    rerun = run_python([MAIN, *argv], timeout=240)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-2000:]
    assert 'continuing epoch 1 at batch' in rerun.stdout
    _assert_same_weights(straight, killed)


@pytest.mark.slow
def test_two_processes_sigterm_inside_epoch_resumes_bit_for_bit(tmp_path):
    """torchrun, 2 gloo processes: SIGTERM to the launcher at a random batch of epoch 1; both ranks save
    one step checkpoint (each rank's random states and metrics in it) and the rerun ends bit for bit as
    an uninterrupted 2-process run."""
    data = make_image_folder(str(tmp_path / 'data'), train_per_class=16, val_per_class=4)
    straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
    extra = dict(HEAVY, batch_size=2, num_workers=0)

    def cmd(out):
        return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                f'--master_port={free_port()}', MAIN, *tiny_argv(data, out, **extra)]
    res = subprocess.run(cmd(straight), cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    at = random.Random(2).randrange(1, BATCHES - 3)
    code, out = stop_inside_epoch_1(cmd(stopped), signal.SIGTERM, at)
    assert code != 0, out[-3000:]
    position = _weights(f'{stopped}/{run_dir.STEP_NAME}')['step']
    assert position['epoch'] == 1 and position['world_size'] == 2 and len(position['ranks']) == 2
    assert position['samples'] == position['batch'] * 2 * 2
    rerun = subprocess.run(cmd(stopped), cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f'continuing epoch 1 at batch {position["batch"]}' in rerun.stdout
    _assert_same_weights(straight, stopped)


def test_resumable_sampler_skips_to_the_same_global_sample():
    """The epoch's order is one permutation dealt to the ranks: after k samples on each of W ranks the
    rest is the same whatever the world size, and skipping never reads the skipped indices."""
    data = list(range(37))
    full = list(datasets.ResumableSampler(data, num_replicas=1, rank=0, seed=3))
    for world in (1, 2, 4):
        parts = []
        for rank in range(world):
            s = datasets.ResumableSampler(data, num_replicas=world, rank=rank, seed=3)
            s.set_epoch(0)
            s.skip(datasets.rank_offset(12, world))
            parts.append(list(s))
            assert len(s) == -(-37 // world)  # the batch count of the epoch stays
            s.set_epoch(1)
            assert s.start == 0  # the skip is for the resumed epoch only
        dealt = [i for group in zip(*parts, strict=False) for i in group]
        assert dealt[:37 - 12] == full[12:]
    assert datasets.rank_offset(12, 5) is None


def test_sample_seeded_augmentation_depends_on_epoch_and_index_only():
    """The same (epoch, index) gives the same random draw, whatever was read before; another epoch differs."""
    class Draw(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.rand(1).item(), random.random()
    ds = datasets.SampleSeeded(Draw(), seed=5)
    ds.set_epoch(2)
    a = [ds[i] for i in range(8)]
    b = [ds[i] for i in reversed(range(8))][::-1]
    assert a == b
    ds.set_epoch(3)
    assert ds[0] != a[0]


@pytest.mark.slow
def test_step_checkpoint_of_another_shape_resumes_at_the_same_sample_or_refuses(data, tmp_path):
    """A step checkpoint saved at 24 samples of epoch 1 by batch 4 x 2 accumulation: batch 2 x 2
    accumulation continues at batch 12; batch 8 x 2 accumulation (16 samples a step) is refused in one
    line that names the saved shape."""
    import main as train_main
    out = str(tmp_path / 'run')
    argv = tiny_argv(data, out, **dict(HEAVY, epochs=1, aa='none', mixup=0, cutmix=0, reprob=0))
    assert train_main.run(argv) == 0
    ckpt = _weights(f'{out}/checkpoint-0.pth')
    ckpt['epoch'] = 0
    ckpt['step'] = dict(epoch=1, batch=6, samples=24, global_step=9, world_size=1, batch_size=4, update_freq=2,
                        seed=0, steps_per_epoch=6, ranks=[{}])
    torch.save(ckpt, f'{out}/{run_dir.STEP_NAME}')
    other = tiny_argv(data, out, **dict(HEAVY, aa='none', mixup=0, cutmix=0, reprob=0, batch_size=2))
    res = run_python([MAIN, *other], timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert 'continuing epoch 1 at batch 12 (sample 24 of the epoch)' in res.stdout
    assert 'continuing at sample 24 of epoch 1' in res.stdout
    torch.save(ckpt, f'{out}/{run_dir.STEP_NAME}')
    os.remove(f'{out}/checkpoint-1.pth')
    bad = run_python([MAIN, *tiny_argv(data, out, **dict(HEAVY, batch_size=8))], timeout=240)
    assert bad.returncode == 2
    lines = [ln for ln in (bad.stdout + bad.stderr).splitlines() if ln.startswith('error:')]
    assert len(lines) == 1 and 'not a whole number of optimizer steps' in lines[0]
    assert '--batch_size 4 --update_freq 2 on 1 processes' in lines[0]
    assert 'Traceback' not in bad.stderr
