"""End-to-end runs of main.py on tiny data: resume equivalence, kill -9 recovery, checkpoint
files, evaluation of a checkpoint, and a clear error + non-zero exit for each bad input."""
import glob
import os
import signal
import subprocess
import sys

import pytest
import torch

import main as train_main
from helpers import MAIN, ROOT, make_image_folder, read_log, run_python, subprocess_env, tiny_argv


def _weights_only(path):
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.mark.slow
def test_resume_equivalence_and_eval(data, tmp_path, capsys):
    """2 epochs straight == 1 epoch + auto-resume for 1 more: bitwise equal model, EMA and
    optimizer state (mixup, drop path, EMA, accumulation and augmentation all on). Then
    ``--eval true --resume`` reproduces the logged accuracy."""
    extra = dict(mixup=0.8, cutmix=1.0, smoothing=0.1, drop_path=0.1, model_ema='true', model_ema_eval='true',
                 model_ema_decay=0.9, update_freq=2, hflip=0.5, aa='rand-m9-mstd0.5-inc1', color_jitter=0.4)
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    assert train_main.run(tiny_argv(data, straight, **extra)) == 0
    assert train_main.run(tiny_argv(data, split, run_epochs=1, **extra)) == 0
    assert sorted(os.listdir(split)).count('checkpoint-1.pth') == 0
    assert train_main.run(tiny_argv(data, split, **extra)) == 0
    assert 'continuing at epoch 1' in capsys.readouterr().out
    a, b = _weights_only(f'{straight}/checkpoint-1.pth'), _weights_only(f'{split}/checkpoint-1.pth')
    for part in ('model', 'model_ema'):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert all(torch.equal(sa[i]['exp_avg'], sb[i]['exp_avg']) for i in sa)
    assert a['epoch'] == b['epoch'] == 1 and a['max_accuracy'] == b['max_accuracy']
    la, lb = read_log(straight), read_log(split)
    assert [r['train_loss'] for r in la] == [r['train_loss'] for r in lb]
    assert {'checkpoint-0.pth', 'checkpoint-1.pth', 'checkpoint-best.pth', 'log.txt'} <= set(os.listdir(straight))
    assert glob.glob(f'{straight}/events.out.tfevents.*')
    assert isinstance(a['args'], dict) and a['args']['model'] == 'hornet_tiny_gf'

    capsys.readouterr()
    code = train_main.run(tiny_argv(data, '', eval='true', resume=f'{straight}/checkpoint-1.pth',
                                    model_ema='true', model_ema_eval='true'))
    out = capsys.readouterr().out
    assert code == 0
    acc = [line for line in out.splitlines() if line.startswith('* Acc@1')]
    assert len(acc) == 2 and f'Acc@1 {la[-1]["test_acc1"]:.3f}' in acc[0]
    assert f'Acc@1 {la[-1]["test_acc1_ema"]:.3f}' in acc[1]


@pytest.mark.slow
def test_kill_9_mid_epoch_then_rerun_continues(data, tmp_path):
    """SIGKILL while epoch 1 trains; the rerun resumes from checkpoint-0 and finishes; every
    checkpoint file loads with weights_only=True and no temp file is left behind."""
    out = str(tmp_path / 'run')
    argv = tiny_argv(data, out, epochs=3, batch_size=2, print_freq=1)
    proc = subprocess.Popen([sys.executable, MAIN, *argv], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # wait until epoch 1 is a few steps in
        seen.append(line)
        if line.startswith('Epoch: [1]') and '[ 3/24]' in line:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert os.path.exists(f'{out}/checkpoint-0.pth') and not os.path.exists(f'{out}/checkpoint-1.pth')
    assert len(read_log(out)) == 1
    with open(f'{out}/log.txt', 'a') as f:  # as if the kill had cut a line short
        f.write('{"train_loss": 1.0, "epo')
    rerun = run_python([MAIN, *argv], timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert 'checkpoint-0.pth' in rerun.stdout and 'continuing at epoch 1' in rerun.stdout
    assert 'CPU allocator: freed memory is kept for reuse' in rerun.stdout  # --keep_freed_memory default
    assert 'Epoch: [0]' not in rerun.stdout
    assert [r['epoch'] for r in read_log(out)] == [0, 1, 2]
    files = sorted(os.listdir(out))
    assert not [f for f in files if f.startswith('.tmp-')]
    for f in files:
        if f.endswith('.pth'):
            ckpt = _weights_only(os.path.join(out, f))
            assert {'model', 'optimizer', 'epoch', 'scaler', 'args'} <= set(ckpt)
    assert _weights_only(f'{out}/checkpoint-2.pth')['epoch'] == 2


def _one_epoch_without_and_with(data, tmp_path, flag: str, on: str = 'true') -> list[tuple[dict, dict]]:
    """``main.py`` for one epoch with ``--<flag> false`` then ``on``: each run's log record and
    saved model weights."""
    runs = []
    for value in ('false', on):
        out = str(tmp_path / f'{flag}_{value}')
        assert train_main.run(tiny_argv(data, out, epochs=1, **{flag: value})) == 0
        runs.append((read_log(out)[0], _weights_only(f'{out}/checkpoint-0.pth')['model']))
    return runs


def _assert_same_training(runs, rel: float, rtol: float, atol: float) -> None:
    """The two runs of :func:`_one_epoch_without_and_with` logged the same losses (within ``rel``)
    and accuracy, and saved the same weight names and values (within ``rtol``/``atol``)."""
    (log0, sd0), (log1, sd1) = runs
    for key in ('train_loss', 'test_loss'):
        assert log1[key] == pytest.approx(log0[key], rel=rel), key
    assert log1['test_acc1'] == log0['test_acc1']
    assert list(sd1) == list(sd0)
    for k in sd0:
        torch.testing.assert_close(sd1[k], sd0[k], rtol=rtol, atol=atol, msg=k)


@pytest.mark.slow
def test_compile_flag_trains_and_evaluates_like_eager(data, tmp_path, capsys, new_graphs):
    """``--compile true`` (TRAINING.md) as documented: a GF model (7x7 dwconv stages and the global
    filter) trains and evaluates compiled with the losses and accuracy of the eager run, saves
    checkpoints without torch.compile's ``_orig_mod.`` prefix, and ``--eval true --compile true``
    evaluates the checkpoint compiled too."""
    runs = _one_epoch_without_and_with(data, tmp_path, 'compile')
    # compiled: a training graph (forward + backward); evaluation after the epoch runs the plain model
    assert new_graphs() == 1
    out = capsys.readouterr().out
    assert out.count('torch.compile: the first steps compile the model') == 1
    _assert_same_training(runs, rel=1e-4, rtol=1e-3, atol=1e-4)

    log = runs[1][0]
    ckpt = str(tmp_path / 'compile_true' / 'checkpoint-0.pth')
    assert train_main.run(tiny_argv(data, '', eval='true', resume=ckpt, compile='true', batch_size=10)) == 0
    out = capsys.readouterr().out
    # 24 images in batches of 15: a static evaluation graph per batch size
    assert new_graphs() == 3
    assert 'torch.compile: the first' in out
    assert f'* Acc@1 {log["test_acc1"]:.3f}' in out and f'loss {log["test_loss"]:.3f}' in out

    # a second compiled training run at another size in the same process (a sweep): with symbolic
    # sizes, which the size change would bring about, inductor failed to compile
    assert train_main.run(tiny_argv(data, str(tmp_path / 'size48'), epochs=1, compile='true', input_size=48)) == 0
    assert new_graphs() == 4


@pytest.mark.slow
def test_compile_blocks_flag_trains_and_evaluates_like_eager(data, tmp_path, capsys, new_graphs):
    """``--compile blocks`` (TRAINING.md): each HorNet block compiled on its own, in place. Same losses,
    accuracy and weights as the eager run; checkpoint keys unchanged; one graph per block kind for
    training and one per block kind and evaluation batch size (the per-epoch evaluation runs compiled
    too); a bad value is refused with the choices."""
    runs = _one_epoch_without_and_with(data, tmp_path, 'compile', on='blocks')
    # 4 stages, 1 block each: 4 block kinds (16-128 wide; 7x7, 7x7, GF, GF), trained at batch 8 and
    # evaluated in batches of 12 (24 images)
    assert new_graphs() == 4 + 4
    assert capsys.readouterr().out.count('torch.compile: the first steps compile each kind of HorNet block') == 1
    _assert_same_training(runs, rel=1e-4, rtol=1e-3, atol=1e-4)
    with pytest.raises(SystemExit):
        train_main.parse_args(tiny_argv(data, '', compile='layers'))
    assert "expected false, true, model or blocks, got 'layers'" in capsys.readouterr().err


@pytest.mark.slow
def test_channels_last_flag_trains_like_default(data, tmp_path):
    """``--channels_last true`` as documented: same losses, accuracy and weights as the default
    layout; the checkpoint it writes loads into a fresh model."""
    runs = _one_epoch_without_and_with(data, tmp_path, 'channels_last')
    _assert_same_training(runs, rel=1e-5, rtol=1e-4, atol=1e-5)
    sd = runs[1][1]
    assert sd['downsample_layers.0.0.weight'].is_contiguous(memory_format=torch.channels_last)
    train_main.build_model(train_main.parse_args(tiny_argv(data, ''))).load_state_dict(sd)


def _run_err(argv, capsys):
    code = train_main.run(argv)
    err = capsys.readouterr().err
    return code, err


def test_bad_inputs_give_clear_errors(data, tmp_path, capsys):
    """Missing/empty data folder, unknown model, a checkpoint that does not fit, a 22k head
    without a map: each exits 2 with a message that says what to fix."""
    out = str(tmp_path / 'o')
    code, err = _run_err(tiny_argv(str(tmp_path / 'nowhere'), out), capsys)
    assert code == 2 and f'{tmp_path}/nowhere/train' in err and 'does not exist' in err
    os.makedirs(tmp_path / 'empty' / 'train' / 'a')
    code, err = _run_err(tiny_argv(str(tmp_path / 'empty'), out), capsys)
    assert code == 2 and f'{tmp_path}/empty/train' in err and 'no images' in err
    code, err = _run_err(tiny_argv(data, out, model='hornet_tiny_5x5'), capsys)
    assert code == 2 and "unknown --model 'hornet_tiny_5x5'" in err and 'hornet_large_gf_img384' in err
    # a checkpoint of another width
    other = tmp_path / 'other.pth'
    assert train_main.run(tiny_argv(data, str(tmp_path / 'w'), base_dim=8, epochs=1)) == 0
    os.replace(tmp_path / 'w' / 'checkpoint-0.pth', other)
    code, err = _run_err(tiny_argv(data, '', eval='true', resume=str(other)), capsys)
    assert code == 2 and 'shape mismatches' in err
    assert 'downsample_layers.0.0.weight (8, 3, 4, 4) vs model (16, 3, 4, 4)' in err
    # 21841 classes -> 1000 without a map
    state = train_main.build_model(train_main.parse_args(tiny_argv(data, '', nb_classes=21841))).state_dict()
    torch.save({'model': state}, tmp_path / 'in22k.pth')
    args = train_main.parse_args(tiny_argv(data, out, nb_classes=1000, finetune=str(tmp_path / 'in22k.pth')))
    model = train_main.build_model(args)
    train_main.load_finetune(args, model)  # mapped with the shipped data/in1k_to_in22k_map.txt
    args.head_map = 'drop'
    train_main.load_finetune(args, model)  # explicit: start the head fresh
    code, err = _run_err(tiny_argv(data, out, nb_classes=5), capsys)
    assert code == 2 and 'has 3 class folders but --nb_classes is 5' in err


def test_corrupt_image_is_named(data, tmp_path, capsys):
    """A file that is not an image stops training with its path in the message (also when it
    is read inside a DataLoader worker)."""
    bad = make_image_folder(str(tmp_path / 'bad'), train_per_class=4, val_per_class=2)
    path = os.path.join(bad, 'train', 'class_1', '002.png')
    with open(path, 'wb') as f:
        f.write(b'not a png')
    code, err = _run_err(tiny_argv(bad, str(tmp_path / 'o'), batch_size=4, num_workers=1), capsys)
    assert code == 2 and f'cannot read image {path}' in err
    assert 'Traceback' not in err


def test_non_finite_loss_stops_and_keeps_checkpoint(data, tmp_path, capsys, monkeypatch):
    """A NaN loss in epoch 1 stops with exit 2, names epoch and step, and leaves the epoch-0
    checkpoint intact."""
    real = train_main.build_training_parts
    calls = {'n': 0}

    def nan_after_epoch0(args, n):
        mixup_fn, crit = real(args, n)

        class Crit(torch.nn.Module):
            def forward(self, out, target):
                calls['n'] += 1
                loss = crit(out, target)
                return loss * float('nan') if calls['n'] == 8 else loss
        return mixup_fn, Crit()
    monkeypatch.setattr(train_main, 'build_training_parts', nan_after_epoch0)
    out = str(tmp_path / 'nan')
    code, err = _run_err(tiny_argv(data, out, epochs=3), capsys)  # 6 batches per epoch
    assert code == 2 and 'loss is nan at epoch 1, step 1' in err
    assert sorted(f for f in os.listdir(out) if f.endswith('.pth')) == ['checkpoint-0.pth', 'checkpoint-best.pth']
    assert _weights_only(f'{out}/checkpoint-0.pth')['epoch'] == 0
