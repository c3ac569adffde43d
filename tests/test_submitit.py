"""run_with_submitit.py: local 2-task CPU training, preemption + requeue, the SLURM sbatch script."""
import json
import os
import re
import signal
import stat
import time

import pytest

import run_with_submitit as rws
from helpers import make_image_folder, subprocess_env, tiny_argv


def _tiny_argv(data, job_dir, epochs):
    """Two local CPU tasks; main.py's flags are the shared tiny ones (the job dir is the output dir)."""
    return ['--cluster', 'local', '--nodes', '1', '--ngpus', '2', '--timeout', '20', '--job_dir', job_dir,
            *tiny_argv(data, '', model='hornet_tiny_7x7', nb_classes=2, batch_size=4, epochs=epochs, lr=None,
                       save_ckpt_num=None)]


@pytest.fixture
def job_env(monkeypatch):
    """The tasks start with this process's environment: make it a child's (PYTHONPATH: they unpickle
    run_with_submitit.Trainer by module name; one thread each on 2 cores; no launcher variables)."""
    env = subprocess_env()
    for k in set(os.environ) - set(env):
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def _log_epochs(job_dir):
    path = os.path.join(job_dir, 'log.txt')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)['epoch'] for line in f if line.strip()]


def _results(job, timeout: float = 300):
    """``job.results()`` with a deadline: a job whose tasks never exit fails the test (with the
    tasks' logs) instead of hanging CI; the caller's ``job.cancel()`` then stops the tasks."""
    deadline = time.time() + timeout
    while not job.done():
        if time.time() > deadline:
            logs = '\n'.join(f'--- task {t}:\n{_task_log(job, t, "err")[-3000:]}' for t in (0, 1))
            raise AssertionError(f'job {job.job_id} still running after {timeout} s\n{logs}')
        time.sleep(0.2)
    return job.results()  # one per task; raises if a task failed


def _task_log(job, task, kind='out'):
    with open(os.path.join(job.paths.folder, f'{job.job_id}_{task}_log.{kind}')) as f:
        return f.read()


@pytest.mark.slow
def test_local_two_tasks_one_epoch(tmp_path, job_env):
    data = make_image_folder(str(tmp_path / 'data'), classes=2, train_per_class=16, val_per_class=4)
    job_dir = str(tmp_path / 'job')
    job = rws.submit(rws.parse_args(_tiny_argv(data, job_dir, epochs=1)))
    try:
        results = _results(job)
    finally:
        job.cancel()  # no-op once finished; never leave tasks running after a failure
    assert sorted(r['rank'] for r in results) == [0, 1]
    assert [r['world_size'] for r in results] == [2, 2]
    assert results[0]['rank_param_max_diff'] == 0.0  # DDP kept both replicas identical
    assert os.path.isfile(os.path.join(job_dir, 'checkpoint-0.pth'))
    assert _log_epochs(job_dir) == [0]
    for task in (0, 1):  # rank and world size came from submitit's JobEnvironment
        assert f'[submitit] task {task}/2 (local rank {task})' in _task_log(job, task)


def _rank0_pid(controller_pid):
    """The task process with submitit global rank 0 under the local job controller."""
    children = []
    for tid in os.listdir(f'/proc/{controller_pid}/task'):
        with open(f'/proc/{controller_pid}/task/{tid}/children') as f:
            children += [int(p) for p in f.read().split()]
    for pid in children:
        with open(f'/proc/{pid}/environ', 'rb') as f:
            env = dict(kv.split(b'=', 1) for kv in f.read().split(b'\0') if b'=' in kv)
        if env.get(b'SUBMITIT_LOCAL_GLOBALID') == b'0':
            return pid
    raise AssertionError(f'no rank-0 task under controller {controller_pid}')


@pytest.mark.slow
def test_preemption_requeues_and_resumes(tmp_path, job_env):
    data = make_image_folder(str(tmp_path / 'data'), classes=2, train_per_class=32, val_per_class=4)
    job_dir = str(tmp_path / 'job')
    epochs = 5
    job = rws.submit(rws.parse_args(_tiny_argv(data, job_dir, epochs=epochs)))
    try:
        deadline = time.time() + 150
        # main.py writes an epoch's log line, then its checkpoint: wait for both of epoch 0, and for
        # epoch 1's first progress line (its first step is done)
        while not (_log_epochs(job_dir) and os.path.exists(os.path.join(job_dir, 'checkpoint-0.pth'))
                   and 'Epoch: [1] [' in _task_log(job, 0)):
            assert time.time() < deadline and job.state == 'RUNNING', 'epoch 1 never started'
            time.sleep(0.05)
        # what SLURM does on preemption: USR2 to the job; submitit's handler on rank 0 calls
        # Trainer.checkpoint() and requeues the job (locally: the controller restarts all tasks)
        os.kill(_rank0_pid(int(job.job_id)), signal.SIGUSR2)
        results = _results(job)
    finally:
        job.cancel()
    assert [r['world_size'] for r in results] == [2, 2]

    log0 = _task_log(job, 0)
    assert 'this job is preempted' in log0 and 'Requeued job' in log0
    assert log0.count('Starting with JobEnvironment') == 2  # the same job ran twice
    # the signal waited for the next optimizer step, which wrote a step checkpoint; the requeued job
    # starts there, inside epoch 1, not at its start
    saved = re.search(r'saved \S*checkpoint-step\.pth \(epoch 1, batch (\d+), step (\d+)\)', log0)
    assert saved and int(saved.group(1)) >= 2, log0[-3000:]
    assert re.search(r'will resume from \S*checkpoint-step\.pth', log0)
    continued_at = int(re.search(r'continuing at epoch (\d+)', log0).group(1))
    assert continued_at == 1 < epochs
    assert f'continuing epoch 1 at batch {saved.group(1)} (sample {int(saved.group(1)) * 8} of' in log0
    # every epoch logged exactly once, in order: nothing lost, nothing repeated
    assert _log_epochs(job_dir) == list(range(epochs))


def _fake_slurm(bin_dir, capture):
    os.makedirs(bin_dir)
    scripts = {
        'sbatch': f'#!/bin/sh\ncp "$1" "{capture}"\necho "Submitted batch job 4242"\n',
        'srun': '#!/bin/sh\nexit 1\n',
    }
    for name, text in scripts.items():
        path = os.path.join(bin_dir, name)
        with open(path, 'w') as f:
            f.write(text)
        os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def test_slurm_sbatch_script(tmp_path, monkeypatch, capsys):
    capture = tmp_path / 'captured.sh'
    _fake_slurm(str(tmp_path / 'bin'), capture)
    monkeypatch.setenv('PATH', f'{tmp_path / "bin"}{os.pathsep}{os.environ["PATH"]}')
    job_dir = str(tmp_path / 'logs' / 'x')
    # the original TRAINING.md command; no --cluster: submitit picks SLURM because srun exists
    argv = ['--nodes', '4', '--ngpus', '8', '--model', 'hornet_tiny_7x7', '--drop_path', '0.2',
            '--clip_grad', '100', '--batch_size', '128', '--lr', '4e-3', '--update_freq', '1',
            '--model_ema', 'true', '--model_ema_eval', 'true', '--data_path', '/path/to/imagenet-1k',
            '--job_dir', job_dir, '--partition', 'gpu_long', '--comment', 'deadline']
    assert rws.main(argv) == 0
    assert 'Submitted job 4242' in capsys.readouterr().out
    script = capture.read_text()
    sbatch = dict(re.findall(r'^#SBATCH --([\w-]+)=(.*)$', script, re.M))
    assert sbatch['nodes'] == '4' and sbatch['gpus-per-node'] == '8' and sbatch['ntasks-per-node'] == '8'
    assert sbatch['time'] == '4320' and sbatch['partition'] == 'gpu_long'  # --timeout 72 (hours) by default
    assert sbatch['constraint'] == 'volta32gb' and sbatch['comment'] == 'deadline'
    assert sbatch['cpus-per-task'] == '10' and sbatch['mem'] == '320GB' and sbatch['signal'] == 'USR2@120'
    assert sbatch['output'] == f'{job_dir}/%j_0_log.out'
    assert re.search(rf'^srun .*--output {re.escape(job_dir)}/%j_%t_log.out .*submitit.core._submit', script, re.M)

    # the pickled trainer got the main.py flags, with outputs in the job folder
    from submitit.core.utils import DelayedSubmission
    trainer = DelayedSubmission.load(os.path.join(job_dir, '4242_submitted.pkl')).function
    a = trainer.args
    assert (a.model, a.drop_path, a.clip_grad, a.batch_size, a.model_ema) == ('hornet_tiny_7x7', 0.2, 100, 128, True)
    assert a.output_dir == job_dir and a.log_dir is None  # main.py's log_dir defaults to output_dir


@pytest.mark.parametrize('flags, minutes, volta', [
    ([], '4320', True),  # the original's defaults: 72 hours, volta32gb
    (['--timeout', '72'], '4320', True),  # a copied --timeout 72 is 72 hours, not minutes
    (['--timeout', '2', '--use_volta32'], '120', True),
    (['--timeout', '1', '--no_volta32'], '60', False),
    (['--use_volta32', 'false'], '4320', False),
])
def test_sbatch_time_is_hours_and_volta32_toggle(flags, minutes, volta, tmp_path, monkeypatch):
    """--timeout is in hours: sbatch --time = 60 x hours (minutes); the volta32gb constraint is
    on by default and --no_volta32 / --use_volta32 false turn it off."""
    capture = tmp_path / 'captured.sh'
    _fake_slurm(str(tmp_path / 'bin'), capture)
    monkeypatch.setenv('PATH', f'{tmp_path / "bin"}{os.pathsep}{os.environ["PATH"]}')
    argv = ['--nodes', '1', '--ngpus', '8', '--model', 'hornet_tiny_7x7', '--job_dir', str(tmp_path / 'job')]
    assert rws.main(argv + flags) == 0
    sbatch = dict(re.findall(r'^#SBATCH --([\w-]+)=(.*)$', capture.read_text(), re.M))
    assert sbatch['time'] == minutes
    assert sbatch.get('constraint') == ('volta32gb' if volta else None)


def test_clear_errors(tmp_path, monkeypatch, capsys):
    base = ['--model', 'hornet_tiny_7x7', '--job_dir', str(tmp_path / 'job')]
    monkeypatch.setenv('PATH', str(tmp_path))  # no sbatch/srun
    assert rws.main(base + ['--cluster', 'slurm']) == 2
    assert 'SLURM is not available' in capsys.readouterr().err
    assert rws.main(base + ['--cluster', 'local', '--nodes', '2']) == 2
    assert 'use --nodes 1' in capsys.readouterr().err
    (tmp_path / 'file').write_text('')
    assert rws.main(['--cluster', 'local', '--nodes', '1', '--job_dir', str(tmp_path / 'file' / 'job')]) == 2
    assert 'cannot create or write' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        rws.main(base + ['--no_such_flag', '1'])
    assert e.value.code == 2 and 'unrecognized arguments: --no_such_flag' in capsys.readouterr().err


def _write_log(path, epochs, tail=''):
    with open(path, 'w') as f:
        f.writelines(json.dumps({'epoch': e, 'train_loss': 1.0 / (e + 1)}) + '\n' for e in epochs)
        f.write(tail)


def test_checkpoint_requeues_from_newest_complete_checkpoint(tmp_path):
    import torch
    out = tmp_path / 'out'
    out.mkdir()
    for e in (1, 2):
        torch.save({'model': {}, 'epoch': e}, out / f'checkpoint-{e}.pth')
    (out / 'checkpoint-3.pth').write_bytes(b'PK\x03\x04 cut short by the signal')
    # Trainer.checkpoint(): the requeued trainer resumes from the newest complete checkpoint, even
    # over a --resume given at launch (main.py trims log.txt back to that epoch)
    args = rws.parse_args(['--output_dir', str(out), '--resume', '/elsewhere/released.pth', '--auto_resume', 'false'])
    requeued = rws.Trainer(args).checkpoint().function
    assert requeued.args.resume == str(out / 'checkpoint-2.pth') and requeued.args.auto_resume is True
    assert args.resume == '/elsewhere/released.pth'  # the running trainer's args are untouched
