"""Careless input to main.py and export.py: each case exits with a one-line message that names
the cause, and leaves every file as it was (``--eval`` without ``--resume`` included). A malicious
pickle never runs, whichever entry point it is given to."""
import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import datasets
import export
import main as train_main
import run_dir
from helpers import (
    MAIN,
    ROOT,
    SMALL_ARGS,
    read_log,
    run_python,
    snapshot,
    subprocess_env,
    tensorboard_events,
    tiny_argv,
)

EXPORT_ARGS = ['--model', 'hornet_tiny_gf', *SMALL_ARGS, '--input_size', '32', '--format', 'onnx']


class Payload:
    """A pickle whose loading writes a marker file (what a crafted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").write("pwned")',)


@pytest.fixture(scope='module')
def files(trained, data, tmp_path_factory):
    """Bad checkpoint files, each next to a marker path that a payload would create."""
    d = tmp_path_factory.mktemp('files')
    marker = str(d / 'MARKER')
    paths = {'marker': marker}
    (d / 'empty.pth').write_bytes(b'')
    (d / 'text.pth').write_text('101\n')
    good = (open(os.path.join(trained, 'checkpoint-1.pth'), 'rb')).read()
    (d / 'truncated.pth').write_bytes(good[:len(good) // 2])
    with open(d / 'evil_pickle.pth', 'wb') as f:  # a plain pickle (torch's legacy format)
        pickle.dump({'model': Payload(marker)}, f)
    torch.save({'model': {'w': torch.zeros(1)}, 'extra': Payload(marker)}, d / 'evil_zip.pth')  # zip format
    ckpt = torch.load(os.path.join(trained, 'checkpoint-1.pth'), map_location='cpu', weights_only=True)
    ckpt['model']['head.weight'][0, 0] = float('nan')
    torch.save(ckpt, d / 'nan.pth')
    ckpt = torch.load(os.path.join(trained, 'checkpoint-1.pth'), map_location='cpu', weights_only=True)
    ckpt['label_names'] = ['class_0', 'class_1', 'dog']  # trained on other classes
    torch.save(ckpt, d / 'other_classes.pth')
    for name in ('empty', 'text', 'truncated', 'evil_pickle', 'evil_zip', 'nan', 'other_classes'):
        paths[name] = str(d / f'{name}.pth')
    # data layouts that must be refused (labels mean the same everywhere)
    for name, val_classes in (('renamed', ['class_0', 'class_1', 'kitten']), ('two_val', ['class_0', 'class_1'])):
        root = d / 'layouts' / name
        for split, classes in (('train', ['class_0', 'class_1', 'class_2']), ('val', val_classes)):
            for c in classes:
                shutil.copytree(os.path.join(data, split, 'class_0'), root / split / c)
        paths[name] = str(root)
    (d / 'map4.txt').write_text('class_0\nclass_1\nclass_2\ndog\n')
    paths['map4'] = str(d / 'map4.txt')
    paths['dir'] = str(d)
    armed = tmp_path_factory.mktemp('armed') / 'MARKER'  # the payload is live: unpickling it runs it
    pickle.loads(pickle.dumps(Payload(str(armed))))
    assert armed.read_text() == 'pwned'
    return paths


# (id, tool, argv, output-dir state, exit code, message). Placeholders: {out} the output dir,
# {tmp} the case's folder, {<name>} the files above, {data} the image folder.
CASES = [
    # bad checkpoint files, one line each
    ('resume-empty', 'main', '--resume {empty}', 'empty', 2,
     'cannot load checkpoint {empty}: the file is empty (0 bytes)'),
    ('resume-text', 'main', '--resume {text}', 'empty', 2,
     "cannot load checkpoint {text}: it is a text file (4 bytes, starts with '101')"),
    ('resume-truncated', 'main', '--resume {truncated}', 'empty', 2,
     'cannot load checkpoint {truncated}: the file is truncated or damaged'),
    ('resume-missing', 'main', '--resume {tmp}/nope.pth', 'empty', 2,
     'cannot load checkpoint {tmp}/nope.pth: no such file'),
    ('resume-folder', 'main', '--resume {dir}', 'empty', 2, 'cannot load checkpoint {dir}: it is a directory'),
    ('resume-nan', 'main', '--resume {nan}', 'empty', 2, 'checkpoint {nan} has non-finite weights (1 of'),
    # malicious pickles: refused by every entry point that takes a checkpoint
    ('resume-evil', 'main', '--resume {evil_pickle}', 'empty', 2,
     'cannot load checkpoint {evil_pickle}: it holds Python objects, not only weights'),
    ('resume-evil-zip', 'main', '--resume {evil_zip}', 'empty', 2,
     'cannot load checkpoint {evil_zip}: it holds Python objects, not only weights (it asks for exec); '
     'it was not unpickled'),
    ('finetune-evil', 'main', '--finetune {evil_pickle}', 'empty', 2, 'cannot load checkpoint {evil_pickle}: it holds'),
    ('finetune-evil-zip', 'main', '--finetune {evil_zip}', 'empty', 2, 'cannot load checkpoint {evil_zip}: it holds'),
    ('eval-evil', 'main', '--eval true --resume {evil_pickle}', 'used', 2,
     'cannot load checkpoint {evil_pickle}: it holds'),
    ('eval-evil-zip', 'main', '--eval true --resume {evil_zip}', 'used', 2,
     'cannot load checkpoint {evil_zip}: it holds'),
    ('export-evil', 'export', '--checkpoint {evil_pickle} --output {out}/m.onnx', 'none', 2,
     'cannot load checkpoint {evil_pickle}: it holds Python objects'),
    ('export-evil-zip', 'export', '--checkpoint {evil_zip} --output {out}/m.onnx', 'none', 2,
     'cannot load checkpoint {evil_zip}: it holds Python objects'),
    ('export-empty', 'export', '--checkpoint {empty} --output {out}/m.onnx', 'none', 2, 'the file is empty (0 bytes)'),
    ('export-text', 'export', '--checkpoint {text} --output {out}/m.onnx', 'none', 2, 'it is a text file'),
    ('export-truncated', 'export', '--checkpoint {truncated} --output {out}/m.onnx', 'none', 2, 'truncated or damaged'),
    ('export-nan', 'export', '--checkpoint {nan} --output {out}/m.onnx', 'none', 2, 'has non-finite weights'),
    # --eval never scores NaN or random weights
    ('eval-nan', 'main', '--eval true --resume {nan}', 'none', 2, 'checkpoint {nan} has non-finite weights'),
    ('eval-nothing', 'main', '--eval true', 'empty', 2,
     '--eval true needs weights to evaluate, but no --resume was given and --output_dir {out} holds no checkpoint'),
    ('eval-no-dir', 'main', '--eval true', 'none', 2,
     'no --resume was given and --output_dir {out} holds no checkpoint'),
    # another run's results are never overwritten, a live run's folder never shared
    ('fresh-over-used', 'main', '--auto_resume false', 'used', 2,
     '--output_dir {out} already holds results of another run (checkpoint-1.pth, checkpoint-0.pth, '
     'checkpoint-best.pth, log.txt) that this run would overwrite; rerun with --auto_resume true'),
    ('resume-x-over-used', 'main', '--auto_resume false --resume {trained}/checkpoint-0.pth', 'used', 2,
     'pass --overwrite true to replace them'),
    ('unloadable-in-dir', 'main', '', 'broken', 2, 'already holds results of another run (checkpoint-1.pth, log.txt)'),
    ('second-live-run', 'main', '', 'locked', 2, '--output_dir {out} is in use by another run (pid'),
    # found at start-up, before anything is written
    ('save-freq-0', 'main', '--save_ckpt_freq 0', 'none', 2, '--save_ckpt_freq must be >= 1, got 0'),
    ('batch-0', 'main', '--batch_size 0', 'none', 2, '--batch_size must be >= 1, got 0'),
    ('update-freq-0', 'main', '--update_freq 0', 'none', 2, '--update_freq must be >= 1, got 0'),
    ('print-freq-0', 'main', '--print_freq 0', 'none', 2, '--print_freq must be >= 1, got 0'),
    ('epochs-0', 'main', '--epochs 0', 'none', 2, '--epochs must be >= 1, got 0'),
    ('input-16', 'main', '--input_size 16', 'none', 2,
     '--input_size 16 is too small for hornet_tiny_gf: its stages downsample 32x, so the input must be at least 32'),
    ('input-neg', 'main', '--input_size -8', 'none', 2, '--input_size -8 is too small'),
    ('drop-path-2', 'main', '--drop_path 2', 'none', 2, '--drop_path must lie in [0.0, 1.0], got 2.0'),
    ('lr-nan', 'main', '--lr nan', 'none', 2, '--lr must be a finite number >= 0, got nan'),
    ('save-every-negative', 'main', '--save_every_minutes -5', 'none', 2,
     '--save_every_minutes must be a finite number >= 0, got -5.0'),
    ('unwritable-out', 'main', '--output_dir {tmp}/afile/out --log_dir {tmp}/tb', 'afile', 2,
     'cannot create --output_dir {tmp}/afile/out: Not a directory'),
    ('unwritable-log-dir', 'main', '--log_dir {tmp}/afile/tb', 'afile', 2,
     'cannot write to --log_dir {tmp}/afile/tb: Not a directory'),
    # files the project did not create are never changed: a user's log.txt, a `| tee OUTDIR/log.txt`
    ('foreign-log', 'main', '', 'notes', 2,
     '{out}/log.txt is not a log of this project (line 1 is not a JSON line of an epoch); training writes'),
    ('foreign-log-overwrite', 'main', '--overwrite true', 'notes', 2, '{out}/log.txt is not a log of this project'),
    ('tee-log', 'main', '', 'tee', 2, '{out}/log.txt is not a log of this project (it is empty)'),
    ('export-over-input', 'export', '--checkpoint {out}/checkpoint-1.pth --output {out}/checkpoint-1.pth', 'used', 2,
     '--output {out}/checkpoint-1.pth would overwrite the input checkpoint {out}/checkpoint-1.pth; pick another file'),
    ('export-over-input-overwrite', 'export',
     '--checkpoint {out}/checkpoint-1.pth --output {out}/checkpoint-1.pth --overwrite', 'used', 2,
     'would overwrite the input checkpoint'),
    ('export-existing-output', 'export', '--checkpoint {out}/checkpoint-1.pth --output {out}/log.txt', 'used', 2,
     '{out}/log.txt exists; pass --overwrite to replace it'),
    # a resumed run is the run the command line describes, or it does not start
    ('resume-other-opt', 'main', '--opt sgd', 'used', 2,
     '--opt sgd cannot resume {out}/checkpoint-1.pth, which was trained with --opt adamw: its optimizer state '
     'does not carry over'),
    ('resume-fewer-epochs', 'main', '--epochs 1', 'used', 2,
     '{out}/checkpoint-1.pth has finished 2 epochs, more than --epochs 1: pass --epochs 2 (or more)'),
    # labels mean the same everywhere: class lists are compared by name, before anything is written
    ('val-class-renamed', 'main', '--data_path {renamed}', 'none', 2,
     "{renamed}/val (evaluation data) and the training data have different classes (only the training data "
     "has 'class_2'; only {renamed}/val (evaluation data) has 'kitten')"),
    ('eval-val-class-renamed', 'main', '--eval true --resume {trained}/checkpoint-1.pth --data_path {renamed}', 'none',
     2, "only checkpoint {trained}/checkpoint-1.pth has 'class_2'"),
    ('nb-classes-advice-no-circle', 'main', '--data_path {two_val}', 'none', 2,
     "{two_val}/val (evaluation data) and the training data have different classes (only the training data has "
     "'class_2')"),
    ('resume-other-classes', 'main', '--resume {other_classes}', 'empty', 2,
     "only checkpoint {other_classes} has 'dog'"),
    ('finetune-same-head-other-classes', 'main', '--finetune {other_classes}', 'none', 2,
     "(or pass --head_map drop to start the head fresh)"),
    ('class-map-entry-without-images', 'main', '--data_set folder --class_map {map4} --nb_classes 4', 'none', 2,
     "--class_map {map4} names classes without images: 'dog'"),
    ('image-folder-at-split-root', 'main', '--data_set image_folder --eval_data_path {data}/val', 'none', 2,
     '{data} holds the split folders train/ and val/, not one folder per class: use --data_set IMNET'),
    # one line for every failure (more with generated inputs in test_cli_errors.py)
    ('export-output-folder', 'export', '--output {tmp}', 'none', 2,
     '--output {tmp} is a folder; name the file to write, e.g. {tmp}/model.onnx'),
    ('export-output-under-file', 'export', '--output {tmp}/afile/m.onnx', 'afile', 2,
     '--output {tmp}/afile/m.onnx: {tmp}/afile is a file, not a folder; pick another path'),
]


@pytest.mark.slow
@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_main_and_export_refuse_careless_input(case, data, trained, files, tmp_path, capsys):
    name, tool, argv, state, code, message = case
    out = str(tmp_path / 'out')
    if state == 'empty':
        os.makedirs(out)
    elif state in ('used', 'locked', 'broken'):
        shutil.copytree(trained, out)  # copy2: sizes, bytes and mtimes as the trained run left them
    if state == 'broken':
        os.remove(os.path.join(out, 'checkpoint-0.pth'))
        os.remove(os.path.join(out, 'checkpoint-best.pth'))
        with open(os.path.join(out, 'checkpoint-1.pth'), 'r+b') as f:
            f.truncate(1000)
    if state == 'afile':
        (tmp_path / 'afile').write_text('not a folder')
    if state in ('notes', 'tee'):  # a log.txt someone else wrote: notes, or an empty file tee opened
        os.makedirs(out)
        with open(os.path.join(out, 'log.txt'), 'w') as f:
            f.write('my notes about this run\n' if state == 'notes' else '')
    lock = None
    if state == 'locked':  # a live run holds the folder (another fd: flock conflicts within a process too)
        lock = run_dir.RunLock(out)
        lock.acquire()
    fmt = dict(files, out=out, tmp=str(tmp_path), data=data, trained=trained)
    argv = [a.format(**fmt) for a in argv.split()]
    message = message.format(**fmt)
    before, before_files = snapshot(str(tmp_path)), snapshot(files['dir'])
    capsys.readouterr()
    try:
        if tool == 'main':
            rc = train_main.run(tiny_argv(data, out) + argv)
        else:
            rc = export.main(EXPORT_ARGS + argv)
    finally:
        if lock is not None:
            lock.release()
    captured = capsys.readouterr()
    err = captured.err
    assert rc == code, captured.out[-2000:] + err[-2000:]
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err  # one line, no traceback
    if lock is not None:  # the holder's lock file is part of the snapshot taken while it held it
        before.pop(os.path.join('out', run_dir.LOCK_NAME))
    assert snapshot(str(tmp_path)) == before  # nothing created, changed or removed
    assert snapshot(files['dir']) == before_files
    assert not os.path.exists(files['marker'])


def _event_steps(folder):
    """(step, kind) of every event in the TensorBoard files of ``folder``: kind 'purge' for the
    session-start marker tensorboardX writes for purge_step, else the scalar tag."""
    found = []
    for ev in tensorboard_events(folder):
        if ev.HasField('session_log') and ev.session_log.status == ev.session_log.START:
            found.append((ev.step, 'purge'))
        elif ev.HasField('summary'):
            found.extend((ev.step, v.tag) for v in ev.summary.value)
    return found


def _log_epochs(out):
    return [r['epoch'] for r in read_log(out)]


def test_trained_files_and_eval_of_output_dir(trained, data, capsys):
    """Checkpoints and log.txt follow the umask (0644 under 022, not 0600); no temp or lock file
    stays behind; ``--eval true`` without ``--resume`` scores the newest checkpoint of the folder
    and reports exactly the accuracy logged for that epoch."""
    names = sorted(os.listdir(trained))
    assert [n for n in names if not n.startswith('events.')] == [
        'checkpoint-0.pth', 'checkpoint-1.pth', 'checkpoint-best.pth', 'log.txt']
    for n in ('checkpoint-0.pth', 'checkpoint-1.pth', 'checkpoint-best.pth', 'log.txt'):
        assert os.stat(os.path.join(trained, n)).st_mode & 0o777 == 0o644, n
    before = snapshot(trained)
    capsys.readouterr()
    assert train_main.run(tiny_argv(data, trained, eval='true')) == 0
    out = capsys.readouterr().out
    assert f'evaluating {trained}/checkpoint-1.pth (epoch 1), the newest checkpoint in --output_dir' in out
    last = read_log(trained)[-1]
    assert last['epoch'] == 1
    assert f'* Acc@1 {last["test_acc1"]:.3f} Acc@5 {last["test_acc5"]:.3f} loss {last["test_loss"]:.3f}' in out
    assert snapshot(trained) == before


@pytest.mark.slow
def test_reruns_always_progress(data, tmp_path, capsys):
    """--run_epochs stops with a checkpoint even off the --save_ckpt_freq grid;
    a rerun with an explicit, older --resume continues from the newest checkpoint of the folder
    (and says so), warns that the effective batch changed, purges TensorBoard from the resumed
    step on, and removes only our temp files of a killed save."""
    out = str(tmp_path / 'run')
    argv = tiny_argv(data, out, epochs=4, run_epochs=1, save_ckpt_freq=5)
    assert train_main.run(argv) == 0
    assert sorted(n for n in os.listdir(out) if n.endswith('.pth')) == ['checkpoint-0.pth', 'checkpoint-best.pth']
    old = str(tmp_path / 'old.pth')
    shutil.copy2(os.path.join(out, 'checkpoint-0.pth'), old)
    assert train_main.run(argv) == 0
    assert _log_epochs(out) == [0, 1]
    assert os.path.exists(os.path.join(out, 'checkpoint-1.pth'))
    ours = os.path.join(out, run_dir.TMP_PREFIX + 'ckpt-0123456789ab')  # as a kill mid-save leaves it
    theirs = os.path.join(out, '.tmp-notes.pth')
    for p in (ours, theirs):
        with open(p, 'wb') as f:
            f.write(b'PK\x03\x04 half written')
    capsys.readouterr()
    assert train_main.run(argv + ['--resume', old, '--batch_size', '4']) == 0
    text = capsys.readouterr().out
    assert (f'resuming from {out}/checkpoint-1.pth (epoch 1), the newest checkpoint in --output_dir, '
            f'instead of --resume {old}') in text
    assert 'continuing at epoch 2' in text
    assert ('the effective batch changed: ' f'{out}/checkpoint-1.pth was trained with 8 (8 per process x 1 '
            'accumulation x 1 processes), this run uses 4 (4 x 1 x 1)') in text
    assert _log_epochs(out) == [0, 1, 2]
    assert not os.path.exists(ours) and os.path.exists(theirs)
    # each resumed run purges from its first step, epoch x steps per epoch: 1 x 6 (batch 8), then
    # 2 x 12 (batch 4); its last logged step is 24 + 12 - 1
    steps = _event_steps(out)
    assert sorted(s for s, k in steps if k == 'purge') == [6, 24]
    assert max(s for s, k in steps if k == 'loss/loss') == 35


@pytest.mark.slow
def test_overwrite_starts_over(trained, data, tmp_path):
    """--overwrite true is the explicit way to start over in a used folder: the old checkpoints
    and log lines are gone, the new run's are there."""
    out = str(tmp_path / 'out')
    shutil.copytree(trained, out)
    assert train_main.run(tiny_argv(data, out, epochs=1, auto_resume='false', overwrite='true')) == 0
    assert _log_epochs(out) == [0]
    assert sorted(n for n in os.listdir(out) if n.endswith('.pth')) == ['checkpoint-0.pth', 'checkpoint-best.pth']
    assert torch.load(os.path.join(out, 'checkpoint-0.pth'), weights_only=True)['args']['epochs'] == 1


@pytest.mark.slow
def test_diverged_model_is_never_saved(data, tmp_path, capsys, monkeypatch):
    """Weights that turn NaN in epoch 1 while the loss stayed finite stop the run with
    exit 2; checkpoints and log.txt are byte-for-byte those of epoch 0 (log.txt strict JSON)."""
    out = str(tmp_path / 'run')
    assert train_main.run(tiny_argv(data, out, epochs=3, run_epochs=1)) == 0
    before = {k: v for k, v in snapshot(out).items() if not k.startswith('events.')}
    real = train_main.train_one_epoch

    def diverging(model, *a, **kw):
        stats = real(model, *a, **kw)
        with torch.no_grad():
            next(model.parameters()).fill_(float('nan'))
        return stats
    monkeypatch.setattr(train_main, 'train_one_epoch', diverging)
    capsys.readouterr()
    assert train_main.run(tiny_argv(data, out, epochs=3)) == 2
    err = capsys.readouterr().err
    # the stem conv, 16 x 3 x 4 x 4 weights, set to NaN
    assert 'the model diverged at epoch 1: 768 of' in err and 'nothing of this epoch was saved' in err
    after = {k: v for k, v in snapshot(out).items() if not k.startswith('events.')}
    assert after == before  # TensorBoard aside (a new event file), every file unchanged
    with open(os.path.join(out, 'log.txt')) as f:
        assert [json.loads(line, parse_constant=lambda c: pytest.fail(c))['epoch'] for line in f] == [0]


@pytest.mark.slow
def test_full_disk_at_save_says_previous_checkpoint_is_intact(data, tmp_path, capsys, monkeypatch):
    """A save failing with ENOSPC ends the run with a message naming the cause and the
    intact previous checkpoint; no temp file is left and the earlier files are unchanged."""
    out = str(tmp_path / 'run')
    assert train_main.run(tiny_argv(data, out, epochs=3, run_epochs=1)) == 0
    before = {k: v for k, v in snapshot(out).items() if k.endswith('.pth')}

    def full_disk(obj, f, *a, **kw):
        f.write(b'PK\x03\x04 partial')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, 'save', full_disk)
    capsys.readouterr()
    assert train_main.run(tiny_argv(data, out, epochs=3)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'error: cannot save checkpoint {out}/checkpoint-')
    assert f'No space left on device; the previous checkpoint {out}/checkpoint-0.pth is intact' in err
    assert {k: v for k, v in snapshot(out).items() if k.endswith('.pth')} == before
    assert not [n for n in os.listdir(out) if n.startswith('.')]


@pytest.mark.slow
@pytest.mark.parametrize('sig,code,message', [
    (signal.SIGINT, 130, 'interrupted; rerun the same command to resume'),
    (signal.SIGTERM, 143, 'terminated (SIGTERM); rerun the same command to resume'),
])
def test_signal_inside_a_checkpoint_write_waits_for_it(data, tmp_path, capsys, monkeypatch, sig, code, message):
    """Ctrl-C / SIGTERM landing inside torch.save's writes: the write completes and the run stops once
    the epoch's files are written, with its usual line and exit code. Handled where it landed, the exception came out
    of torch's zip writer as a RuntimeError and the run ended with 'cannot save checkpoint ...'."""
    out = str(tmp_path / 'run')
    real_save = torch.save

    writes = []

    class SignalledWrites:  # the signal arrives once, in the third write of the first save
        def __init__(self, f):
            self.f = f

        def write(self, b):
            writes.append(len(b))
            if len(writes) == 3:
                signal.raise_signal(sig)
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def save(obj, f, *a, **kw):
        real_save(obj, SignalledWrites(f), *a, **kw)
    monkeypatch.setattr(torch, 'save', save)
    capsys.readouterr()
    assert train_main.run(tiny_argv(data, out, epochs=3)) == code
    assert capsys.readouterr().err.strip() == message
    assert sorted(n for n in os.listdir(out) if not n.startswith('events.')) == [
        'checkpoint-0.pth', 'checkpoint-best.pth', 'log.txt']
    assert run_dir.load_file(os.path.join(out, 'checkpoint-0.pth'))['epoch'] == 0
    assert [r['epoch'] for r in read_log(out)] == [0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # run() put the handlers back
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.slow
@pytest.mark.parametrize('sig,code,message', [
    (signal.SIGINT, 130, 'interrupted; rerun the same command to resume'),
    (signal.SIGTERM, 143, 'terminated (SIGTERM); rerun the same command to resume'),
])
def test_error_caused_by_the_stop_signal_reports_the_stop(data, tmp_path, capsys, monkeypatch, sig, code, message):
    """A Ctrl-C / SIGTERM sent to the process group also kills the DataLoader workers; when their
    death surfaces first (torch raises "DataLoader worker ... is killed by signal") or the signal's
    own exception was swallowed where it landed (logging's at-fork hook), the run still ends with
    the signal's line and exit code, not a traceback."""
    real_set_epoch = datasets.set_epoch

    def set_epoch(loader, epoch, *a):
        if epoch == 1:
            try:
                signal.raise_signal(sig)
            except (KeyboardInterrupt, train_main.Terminated):
                pass  # swallowed, as in an at-fork hook
            raise RuntimeError('DataLoader worker (pid 4242) is killed by signal: Terminated.')
        return real_set_epoch(loader, epoch, *a)
    monkeypatch.setattr(datasets, 'set_epoch', set_epoch)
    out = str(tmp_path / 'run')
    capsys.readouterr()
    assert train_main.run(tiny_argv(data, out, epochs=3)) == code
    assert capsys.readouterr().err.strip() == message
    assert [r['epoch'] for r in read_log(out)] == [0]


@pytest.mark.slow
@pytest.mark.parametrize('sig,code,message', [
    (signal.SIGINT, 130, 'interrupted; rerun the same command to resume'),
    (signal.SIGTERM, 143, 'terminated (SIGTERM); rerun the same command to resume'),
])
def test_ctrl_c_and_sigterm(data, tmp_path, sig, code, message):
    """Ctrl-C and SIGTERM mid-epoch end with one line (no traceback), the exit codes of
    a signal-terminated shell command, epoch 0's checkpoint intact, a step checkpoint inside epoch 1
    (written at the step boundary before the stop) and no lock or temp file."""
    out = str(tmp_path / 'run')
    argv = tiny_argv(data, out, epochs=3, batch_size=2, print_freq=1)
    proc = subprocess.Popen([sys.executable, MAIN, *argv], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith('Epoch: [1]') and '[ 3/24]' in line:
            break
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert err.strip() == message
    assert sorted(n for n in os.listdir(out) if not n.startswith('events.')) == [
        'checkpoint-0.pth', 'checkpoint-best.pth', run_dir.STEP_NAME, 'log.txt']
    assert run_dir.load_file(os.path.join(out, 'checkpoint-0.pth'))['epoch'] == 0
    assert run_dir.load_file(os.path.join(out, run_dir.STEP_NAME))['step']['epoch'] == 1


@pytest.mark.slow
def test_run_started_with_sigint_ignored_keeps_it_and_stops_on_sigterm(data, tmp_path):
    """A run started as a background job (SIGINT ignored from the start, as `cmd &` and `nohup cmd &`
    in a non-interactive shell do) says so, trains on through a SIGINT, and a SIGTERM still stops it
    at a step boundary with exit 143, its epoch-0 checkpoint intact."""
    out = str(tmp_path / 'run')
    argv = tiny_argv(data, out, epochs=3, batch_size=2, print_freq=1)
    proc = subprocess.Popen([sys.executable, MAIN, *argv], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith('Epoch: [0]') and '[ 3/24]' in line:
            proc.send_signal(signal.SIGINT)
        if line.startswith('Epoch: [1]') and '[ 3/24]' in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip() == 'terminated (SIGTERM); rerun the same command to resume'
    assert any(line.startswith('SIGINT is ignored (started as a background job)') for line in lines[:5]), lines[:5]
    assert [r['epoch'] for r in read_log(out)] == [0]  # epoch 0 ran through the SIGINT
    assert run_dir.load_file(os.path.join(out, 'checkpoint-0.pth'))['epoch'] == 0


_HIDE_TENSORBOARD = '''
import runpy, sys
sys.modules['tensorboardX'] = None  # an import of a None entry raises ImportError: "not installed"
sys.modules['torch.utils.tensorboard'] = None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


@pytest.mark.slow
def test_training_without_any_tensorboard_package_is_one_line(data, tmp_path):
    """With neither tensorboardX nor tensorboard importable (hidden in a child process), a training run
    that logs (it has an --output_dir) stops before its first step: one line that says what to install,
    exit 2, no traceback, no checkpoint."""
    out = str(tmp_path / 'out')
    res = run_python(['-c', _HIDE_TENSORBOARD, MAIN, *tiny_argv(data, out, epochs=1)], timeout=120)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert err[-1].endswith('TensorBoard logging (into --log_dir or --output_dir) needs tensorboardX or '
                            'tensorboard: pip install tensorboardX'), err
    assert 'Traceback' not in res.stderr
    assert not os.path.exists(out) or not [f for f in os.listdir(out) if f.endswith('.pth')]


def test_tensorboard_falls_back_to_torch_utils_tensorboard(tmp_path, monkeypatch):
    """Without tensorboardX, TensorBoard scalars go through ``torch.utils.tensorboard``'s writer (its
    folder keyword is ``log_dir``), with the same purge step and tags."""
    import types

    import utils
    made = []

    class Writer:
        def __init__(self, **kw):
            self.kw, self.scalars = kw, []
            made.append(self)

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def flush(self):
            pass
    monkeypatch.setitem(sys.modules, 'tensorboardX', None)
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', types.SimpleNamespace(SummaryWriter=Writer))
    assert utils.tensorboard_writer_class() == (Writer, 'log_dir')
    log = utils.TensorboardLogger(str(tmp_path), purge_step=12)
    log.update(head='loss', step=12, loss=torch.tensor(0.5), class_acc=None)
    assert made[0].kw['log_dir'] == str(tmp_path) and made[0].kw['purge_step'] == 12
    assert made[0].scalars == [('loss/loss', 0.5, 12)]
