"""The run folder (run_dir.py) as main.py uses it: which files a run may write, replace or remove,
and how a rerun continues: the run the command line describes, or a one-line refusal."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import main as train_main
import run_dir
from helpers import ROOT, read_log, run_python, snapshot, subprocess_env, tiny_argv

# what the project writes into --output_dir; everything else there belongs to someone else
OURS_PREFIXES = ('checkpoint-', 'events.out.tfevents', run_dir.TMP_PREFIX, run_dir.LOCK_NAME,
                 run_dir.WEIGHTS_NAME)
FOREIGN = {
    'notes.txt': b'what I tried\n',
    'my-model.pth': b'PK\x03\x04 not ours',
    '.ipynb_checkpoints/log-checkpoint.txt': b'{}',
    'sub/checkpoint-9.pth': b'a file of the same name, one folder down',
}


def _foreign(snap: dict) -> dict:
    """The entries of a snapshot of the case's folder that are not the run's own: its output folder
    and the files directly in it with our names (log.txt is compared on its own)."""
    def ours(key: str) -> bool:
        name = key[len('out/'):]
        return key == 'out/' or (key.startswith('out/') and '/' not in name and (
            name.startswith(OURS_PREFIXES) or name == 'log.txt'))
    return {k: v for k, v in snap.items() if not ours(k)}


@pytest.mark.slow
@settings(max_examples=12, phases=[Phase.explicit, Phase.reuse, Phase.generate],  # each example is a run: no shrinking
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    folder=st.sampled_from(['absent', 'empty', 'trained', 'notes-log']),
    foreign=st.sets(st.sampled_from(sorted(FOREIGN)), max_size=3),
    overwrite=st.booleans(),
    auto_resume=st.booleans(),
    resume=st.sampled_from(['', 'inside', 'outside']),
    finetune=st.sampled_from(['', 'inside', 'outside']),
    epochs=st.integers(1, 3),
    evaluate=st.booleans(),
)
def test_no_rerun_changes_a_file_the_project_did_not_create(
        data, trained, capsys, folder, foreign, overwrite, auto_resume, resume, finetune, epochs, evaluate):
    """Whatever the flags and the folder's state: the exit code is 0 or 2 (an error: one line on
    stderr, no traceback), every file the project did not create (a user's notes, a log.txt that is
    not ours, files in subfolders) keeps its bytes and mtime, and the files that --resume and
    --finetune name still exist afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'out')
        if folder == 'trained':
            shutil.copytree(trained, out)
        elif folder != 'absent':
            os.makedirs(out)
        if folder == 'notes-log':
            with open(os.path.join(out, 'log.txt'), 'w') as f:
                f.write('epoch 0 looked fine\n')
        if folder != 'absent':
            for rel in foreign:
                os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
                with open(os.path.join(out, rel), 'wb') as f:
                    f.write(FOREIGN[rel])
        outside = os.path.join(tmp, 'elsewhere.pth')
        shutil.copy2(os.path.join(trained, 'checkpoint-0.pth'), outside)
        named = {'': '', 'outside': outside,
                 'inside': os.path.join(out, 'checkpoint-0.pth') if folder == 'trained' else outside}
        argv = tiny_argv(data, out, epochs=epochs, run_epochs=1, overwrite=str(overwrite).lower(),
                         auto_resume=str(auto_resume).lower(), resume=named[resume], finetune=named[finetune],
                         eval='true' if evaluate else None)
        before = snapshot(tmp)
        capsys.readouterr()
        rc = train_main.run(argv)
        err = capsys.readouterr().err
        assert rc in (0, 2), err
        if rc == 2:
            assert len(err.strip().splitlines()) == 1 and err.startswith('error: '), err
        after = snapshot(tmp)
        assert _foreign(after) == _foreign(before)
        if folder == 'notes-log':  # never appended to, trimmed or removed
            assert after['out/log.txt'] == before['out/log.txt']
        for path in (named[resume], named[finetune]):
            assert not path or os.path.isfile(path)
        if folder != 'notes-log' and os.path.exists(os.path.join(out, 'log.txt')):
            assert read_log(out)  # the run's own log: strict JSON, never empty


@pytest.mark.slow
def test_overwrite_starts_over_even_where_a_checkpoint_could_resume(data, trained, tmp_path, capsys):
    """--overwrite true with auto-resume (the default) starts over instead of resuming and training
    nothing; the file that --resume names is kept (and resumed from), the other results removed."""
    out = str(tmp_path / 'out')
    shutil.copytree(trained, out)
    capsys.readouterr()
    assert train_main.run(tiny_argv(data, out, epochs=2, overwrite='true')) == 0
    text = capsys.readouterr().out
    assert 'training epochs 0..1 of 2' in text and [r['epoch'] for r in read_log(out)] == [0, 1]

    out2 = str(tmp_path / 'out2')
    shutil.copytree(trained, out2)
    keep = os.path.join(out2, 'checkpoint-0.pth')
    capsys.readouterr()
    assert train_main.run(tiny_argv(data, out2, epochs=2, overwrite='true', resume=keep, save_ckpt='false')) == 0
    text = capsys.readouterr().out
    assert '--overwrite: removed checkpoint-1.pth, checkpoint-best.pth, log.txt' in text
    assert '--overwrite: kept checkpoint-0.pth, which the command line reads' in text
    assert 'continuing at epoch 1' in text and [r['epoch'] for r in read_log(out2)] == [1]
    assert sorted(n for n in os.listdir(out2) if n.endswith('.pth')) == ['checkpoint-0.pth']


@pytest.mark.slow
def test_resume_applies_changed_optimizer_settings(data, trained, tmp_path, capsys):
    """A rerun with another --layer_decay and --opt_betas continues with them (the lr scales and
    betas of every group), says so, and keeps the optimizer's moments; the same effective batch
    split differently (4 x 2 instead of 8 x 1) is not reported as a change of the batch."""
    out = str(tmp_path / 'out')
    shutil.copytree(trained, out)
    then = torch.load(os.path.join(out, 'checkpoint-1.pth'), weights_only=True)['optimizer']
    capsys.readouterr()
    argv = tiny_argv(data, out, epochs=3, layer_decay=0.5, opt_betas='0.8 0.99', batch_size=4, update_freq=2)
    assert train_main.run(argv) == 0
    text = capsys.readouterr().out
    assert (f'resuming {out}/checkpoint-1.pth with changed settings, applied from epoch 2 on: --layer_decay 0.5 '
            '(was 1.0), --opt_betas [0.8, 0.99] (was None)') in text
    assert 'the effective batch changed' not in text
    assert f'same effective batch 8 as {out}/checkpoint-1.pth, split as 4 x 2 x 1 (was 8 x 1 x 1)' in text
    now = torch.load(os.path.join(out, 'checkpoint-2.pth'), weights_only=True)['optimizer']
    assert len(now['param_groups']) == len(then['param_groups'])
    for group in now['param_groups']:
        assert group['lr_scale'] == pytest.approx(0.5 ** (13 - group['layer_id']))
        assert tuple(group['betas']) == (0.8, 0.99)
    # the moments went on from the checkpoint's: the step count of every parameter grew by epoch 2's steps
    steps = {int(s['step']) for s in now['state'].values()}
    assert steps == {int(s['step']) + 6 for s in then['state'].values()}


@pytest.mark.slow
def test_rerun_of_a_finished_run_trains_nothing_and_keeps_its_files(data, trained, tmp_path, capsys):
    """The same command again on a finished run: exit 0, nothing trained, and its checkpoints and
    log.txt byte for byte as they were."""
    out = str(tmp_path / 'out')
    shutil.copytree(trained, out)
    before = {k: v for k, v in snapshot(out).items() if not k.startswith('events.')}
    capsys.readouterr()
    assert train_main.run(tiny_argv(data, out)) == 0
    assert 'all 2 epochs are trained' in capsys.readouterr().out
    assert {k: v for k, v in snapshot(out).items() if not k.startswith('events.')} == before


@pytest.mark.slow
def test_ema_evaluation_needs_ema_weights(data, trained, capsys):
    """--eval with --model_ema_eval on a checkpoint without EMA weights says so and reports no EMA
    numbers (an EMA started at the loaded weights would repeat the model's own accuracy)."""
    capsys.readouterr()
    stats = train_main.main(train_main.parse_args(tiny_argv(
        data, '', eval='true', resume=os.path.join(trained, 'checkpoint-1.pth'), model_ema='true',
        model_ema_eval='true')))
    text = capsys.readouterr().out
    assert 'holds no EMA weights (its run did not use --model_ema true): no EMA evaluation' in text
    assert 'Test (EMA)' not in text and not any(k.endswith('_ema') for k in stats)
    assert stats['test_acc1'] == pytest.approx(read_log(trained)[-1]['test_acc1'])


def test_log_written_by_someone_else_is_recognised(tmp_path):
    """Our log.txt: one JSON object with an integer epoch per line (the last may be cut short by a
    kill); anything else, an empty file included, is someone else's."""
    cases = {
        '{"epoch": 0, "train_loss": 1.0}\n': None,
        '{"epoch": 0}\n{"epoch": 1, "tr': None,
        '': 'it is empty',
        '\n\n': 'it is empty',
        'notes\n': 'line 1 is not a JSON line of an epoch',
        '{"epoch": 0}\nstep 3 loss 1.2\n': 'line 2 is not a JSON line of an epoch',
        '{"epoch": "0"}\n': 'line 1 is not a JSON line of an epoch',
        '{"epoch": 0, "tr': 'it holds no JSON line of an epoch',
    }
    for text, reason in cases.items():
        (tmp_path / 'log.txt').write_text(text)
        assert run_dir.foreign_log(str(tmp_path)) == reason, text
    (tmp_path / 'log.txt').unlink()
    assert run_dir.foreign_log(str(tmp_path)) is None
    run_dir.append_log(str(tmp_path), {'epoch': 0})
    assert run_dir.trim_log(str(tmp_path), 0) == 1 and not os.path.exists(tmp_path / 'log.txt')


@pytest.mark.slow
def test_save_safetensors_writes_the_best_weights(data, tmp_path):
    """--save_safetensors true: model.safetensors holds the better of the best model and the best EMA
    (by logged accuracy), the class names and the accuracy in its metadata, and loads into timm."""
    import json

    import safetensors
    import timm
    out = str(tmp_path / 'run')
    assert train_main.run(tiny_argv(data, out, save_safetensors='true', model_ema='true', model_ema_eval='true',
                                    model_ema_decay=0.5)) == 0
    last = read_log(out)[-1]
    use_ema = last['max_ema_accuracy'] > last['max_accuracy']
    name, key = ('checkpoint-best-ema.pth', 'model_ema') if use_ema else ('checkpoint-best.pth', 'model')
    best = torch.load(os.path.join(out, name), weights_only=True)
    with safetensors.safe_open(os.path.join(out, 'model.safetensors'), 'pt') as f:
        meta = f.metadata()
        saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no items())
    assert saved.keys() == best[key].keys()
    assert all(torch.equal(saved[k], best[key][k]) for k in saved)
    assert meta['source'] == f'{key} of {name}' and json.loads(meta['label_names']) == best['label_names']
    assert float(meta['acc1']) == pytest.approx(max(last['max_ema_accuracy'], last['max_accuracy']), abs=1e-4)
    model = timm.create_model('hornet_tiny_gf', depths=(1, 1, 1, 1), base_dim=16, num_classes=3, pretrained=True,
                              pretrained_cfg_overlay=dict(file=os.path.join(out, 'model.safetensors'), num_classes=3))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- the module's functions

def _weights_only(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_checkpoint_files_atomic_prune_and_latest(tmp_path):
    """Saves are atomic (no temp file left), pruning keeps the newest N epoch files and never
    the best ones, and auto-resume skips a file that does not load completely."""
    for epoch in range(4):
        run_dir.atomic_save({'model': {'w': torch.full((3,), float(epoch))}, 'epoch': epoch},
                            str(tmp_path / f'checkpoint-{epoch}.pth'))
    run_dir.atomic_save({'model': {}, 'epoch': 1}, str(tmp_path / 'checkpoint-best.pth'))
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-0.pth', 'checkpoint-1.pth', 'checkpoint-2.pth',
                                            'checkpoint-3.pth', 'checkpoint-best.pth']
    with open(tmp_path / 'checkpoint-3.pth', 'r+b') as f:  # as a non-atomic writer would leave it
        f.truncate(100)
    assert run_dir.find_latest_checkpoint(str(tmp_path)) == str(tmp_path / 'checkpoint-2.pth')
    run_dir.prune_checkpoints(str(tmp_path), keep=2)
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-2.pth', 'checkpoint-3.pth', 'checkpoint-best.pth']
    assert _weights_only(str(tmp_path / 'checkpoint-2.pth'))['model']['w'].tolist() == [2.0, 2.0, 2.0]


def test_log_txt_is_strict_json(tmp_path):
    """Non-finite numbers (an fp16 run's skipped-step grad norm is inf) are written as null, and
    trimming drops a line cut short by a kill and the epochs about to be trained again."""
    run_dir.append_log(str(tmp_path), {'epoch': 0, 'train_loss': 1.5, 'train_grad_norm': float('inf'),
                                       'test_acc1': float('nan')})
    run_dir.append_log(str(tmp_path), {'epoch': 1, 'train_loss': 1.25})
    with open(tmp_path / 'log.txt', 'a') as f:
        f.write('{"epoch": 2, "train_lo')
    text = (tmp_path / 'log.txt').read_text()
    assert text.splitlines()[0] == '{"epoch": 0, "train_loss": 1.5, "train_grad_norm": null, "test_acc1": null}'
    assert run_dir.trim_log(str(tmp_path), 1) == 2
    assert (tmp_path / 'log.txt').read_text() == text.splitlines()[0] + '\n'
    assert os.listdir(tmp_path) == ['log.txt']


def test_step_checkpoint_is_latest_until_an_epoch_file_and_never_best(tmp_path):
    """find_latest orders by (epoch, step): a step file inside epoch 2 beats checkpoint-1 and loses to
    checkpoint-2; an epoch-end save removes it; it is never a best file."""
    out = str(tmp_path)
    m = run_dir.CheckpointManager(out, keep=3)
    state = dict(model={'w': torch.zeros(1)}, optimizer={}, epoch=1)
    m.save('1', state)
    m.save_step(dict(state, step=dict(epoch=2, batch=4)))
    assert run_dir.find_latest(out) == (f'{out}/{run_dir.STEP_NAME}', 1)
    m.save('best', dict(state, epoch=1))
    assert not os.path.exists(f'{out}/{run_dir.STEP_NAME}')
    m.save_step(dict(state, step=dict(epoch=2, batch=6)))
    m.save('2', dict(state, epoch=2))
    assert run_dir.find_latest(out) == (f'{out}/checkpoint-2.pth', 2)
    assert sorted(os.listdir(out)) == ['checkpoint-1.pth', 'checkpoint-2.pth', 'checkpoint-best.pth']


def _optimizer(sizes):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(sum(sizes))]
    groups, i = [], 0
    for n in sizes:
        groups.append({'params': params[i:i + n]})
        i += n
    return torch.optim.AdamW(groups, lr=1e-3)


@given(saved=st.lists(st.integers(1, 3), min_size=1, max_size=4),
       now=st.lists(st.integers(1, 3), min_size=1, max_size=4))
@settings(max_examples=40)
def test_optimizer_state_of_other_groups_is_one_line(saved, now):
    """Resuming an optimizer whose parameter groups differ in number or size is a CheckpointError
    naming both layouts; the same layout loads."""
    state = _optimizer(saved).state_dict()
    opt = _optimizer(now)
    if saved == now:
        run_dir._load_optimizer_state(opt, state, 'ck.pth')
        return
    with pytest.raises(run_dir.CheckpointError) as e:
        run_dir._load_optimizer_state(opt, state, 'ck.pth')
    msg = str(e.value)
    assert f'it has {len(saved)} parameter groups of sizes {saved}, this run {len(now)} of sizes {now}' in msg
    assert '--finetune ck.pth' in msg and '\n' not in msg


@pytest.mark.slow
def test_write_limit_is_a_clear_save_error(tmp_path):
    """A real failed write inside torch.save (file size limit, as on a full disk) becomes a
    CheckpointError; the old file under the name survives and no temp file remains."""
    code = (
        'import resource, signal, torch\n'
        'import run_dir\n'
        'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
        'resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n'
        'try:\n'
        f'    run_dir.atomic_save({{"w": torch.zeros(100000)}}, {str(tmp_path / "c.pth")!r})\n'
        'except run_dir.CheckpointError as e:\n'
        '    print(e)\n')
    (tmp_path / 'c.pth').write_bytes(b'old')
    res = run_python(['-c', code], timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith(f'cannot save checkpoint {tmp_path}/c.pth: '), res.stdout
    assert sorted(os.listdir(tmp_path)) == ['c.pth'] and (tmp_path / 'c.pth').read_bytes() == b'old'


@pytest.mark.slow
def test_stale_lock_of_killed_run_does_not_block(tmp_path):
    """A run killed with -9 leaves its lock file; the kernel released the flock, so the next
    run takes the folder (and removes the file when done)."""
    out = tmp_path / 'out'
    out.mkdir()
    code = ('import time; import run_dir\n'
            f'run_dir.RunLock({str(out)!r}).acquire(); print("locked", flush=True); time.sleep(60)\n')
    proc = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == 'locked'
    with pytest.raises(run_dir.OutputDirError, match=f'in use by another run \\(pid {proc.pid} on host'):
        run_dir.RunLock(str(out)).acquire()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert os.listdir(out) == [run_dir.LOCK_NAME]  # left behind by the killed process
    lock = run_dir.RunLock(str(out))
    lock.acquire()
    with open(out / run_dir.LOCK_NAME) as f:
        assert f.read().startswith(f'pid {os.getpid()} on host ')
    lock.release()
    assert os.listdir(out) == []
