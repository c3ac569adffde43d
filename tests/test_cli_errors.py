"""Every failure of a documented command is one line on stderr and exit status 2, never a traceback.

Generated inputs (truncated tars at any offset, label values, optimizer group layouts, argument
lists for each command) check the rule itself; the named tests are the cases users hit."""
import contextlib
import io
import os
import shutil
import tarfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import avg_checkpoints
import calc_flops
import datasets
import export
import main as train_main
import predict
import run_with_submitit as rws
import validate
from helpers import SMALL_ARGS, make_image_folder, tiny_argv
from test_data_formats import make_tarred_folder, make_webdataset
from utils import TrainingError

os.environ.setdefault('HF_DATASETS_OFFLINE', '1')  # tests never download


def call(entry, argv):
    """``entry(argv)`` as the command line runs it: (exit status, stdout, stderr). An exception
    that escapes is a traceback and fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = entry(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return (0 if rc is None else rc), out.getvalue(), err.getvalue()


def assert_one_line_or_success(rc, err, out=''):
    """The invariant: exit 0 or 2, no traceback; a failure is exactly one ``error:`` line on stderr."""
    assert rc in (0, 2), out[-1500:] + err[-1500:]
    assert 'Traceback' not in err, err
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and 'error: ' in lines[0], err


def train(data, out, *extra, **flags):
    """main.py on the tiny data: 1 epoch, batch 4, no evaluation unless asked."""
    flags = dict(dict(epochs=1, batch_size=4, disable_eval='true'), **flags)
    return call(train_main.run, tiny_argv(data, out, **flags) + list(extra))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """3 classes x 4 training / 2 validation images, as a folder, tar files and WebDataset shards."""
    base = tmp_path_factory.mktemp('cli_data')
    folder = make_image_folder(str(base / 'folder'), classes=3, train_per_class=4, val_per_class=2)
    return dict(base=str(base), folder=folder, tar=make_tarred_folder(folder, str(base / 'tars')),
                wds=make_webdataset(folder, str(base / 'wds')))


# ----------------------------------------------------------------------------- data

def test_wds_label_outside_nb_classes(data, tmp_path):
    """WebDataset labels are bare integers: one outside --nb_classes stops the run with a line
    naming it (it was an IndexError traceback from the loss)."""
    rc, out, err = train(data['wds'], str(tmp_path / 'out'), data_set='wds/tiny', nb_classes=2)
    assert rc == 2, out[-2000:] + err[-2000:]
    assert 'has the label 2, outside the 2 classes of --nb_classes 2 (labels 0..1); pass --nb_classes 3' in err
    assert_one_line_or_success(rc, err)


@given(n=st.integers(1, 10), label=st.integers(-3, 12))
@settings(max_examples=40)
def test_label_range_passes_exactly_the_classes(n, label):
    """A stream's label check lets through labels 0..n-1 unchanged and refuses every other with a
    TrainingError that names the label, the class count and a count that would fit."""
    check = datasets.LabelRange(n, '--data_set wds/x')
    if 0 <= label < n:
        assert check(label) == label
        return
    with pytest.raises(TrainingError) as e:
        check(label)
    msg = str(e.value)
    assert f'has the label {label}, outside the {n} classes' in msg and '\n' not in msg
    assert f'pass --nb_classes {max(label + 1, n)}' in msg


def test_wds_folder_without_info_json(data, tmp_path):
    """Shards without _info.json: the message says what is missing and how to name the split
    instead of timm's 'split train not found in info (dict_keys([]))' after a warning."""
    wds = str(tmp_path / 'wds')
    shutil.copytree(data['wds'], wds)
    os.remove(os.path.join(wds, '_info.json'))
    rc, out, err = train(wds, str(tmp_path / 'out'), data_set='wds/tiny')
    assert rc == 2
    assert err.strip() == (f'error: --data_set wds/tiny: --data_path {wds} has no _info.json (the split sizes); '
                           "add it, or name the shards and their sample count, e.g. --train_split "
                           "'tiny-train-{0000..0003}.tar|COUNT' (and --val_split likewise)")
    # the documented shard form still works without it
    rc, out, err = train(wds, str(tmp_path / 'out2'), data_set='wds/tiny',
                         train_split='tiny-train-{0000..0003}.tar|12')
    assert rc == 0, err[-2000:]


def test_hfds_without_label_column(data, tmp_path):
    """A Hugging Face data set without a 'label' column is refused at start-up (it was KeyError:
    'label' from inside the first batch)."""
    hf_root = str(tmp_path / 'hf')
    png = open(os.path.join(data['folder'], 'train', 'class_0', '000.png'), 'rb').read()
    with datasets.hugging_face_datasets() as hf:
        for split in ('train', 'validation'):
            table = hf.Dataset.from_dict({'image': [{'bytes': png, 'path': None}] * 8},
                                         features=hf.Features({'image': hf.Image()}))
            table.to_parquet(os.path.join(hf_root, 'data', f'{split}-00000-of-00001.parquet'))
    rc, out, err = train(str(tmp_path / 'cache'), str(tmp_path / 'out'), data_set=f'hfds/{hf_root}')
    assert rc == 2, out[-2000:] + err[-2000:]
    # above it: Hugging Face's progress bars of reading the parquet files
    assert 'Traceback' not in err
    assert err.strip().splitlines()[-1] == (
        f"error: --data_set hfds/{hf_root} (split 'train') has no 'label' column (its columns: image); image "
        "classification needs an image and a 'label' column")


def _truncated_tars(data, folder, keep):
    shutil.copytree(data['tar'], folder)
    path = os.path.join(folder, 'train.tar')
    raw = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(raw[:int(len(raw) * keep)])
    return folder


def test_truncated_train_tar(data, tmp_path):
    """--data_set folder on a train.tar cut short: one line naming the file (was tarfile.ReadError)."""
    tars = _truncated_tars(data, str(tmp_path / 'tars'), 2 / 3)
    rc, out, err = train(tars, str(tmp_path / 'out'), data_set='folder')
    assert rc == 2
    assert err.strip() == (f'error: --data_set folder: cannot read the tar data at --data_path {tars}/train.tar: '
                           'it is truncated (it lacks the end-of-archive blocks every tar writer adds); rewrite '
                           'or re-download it')


@pytest.mark.slow
@given(keep=st.floats(0.0, 1.0, exclude_max=True))
@settings(max_examples=8)
def test_tar_cut_at_any_offset_fails_in_one_line(data, tmp_path_factory, keep):
    """Whatever the offset a train.tar is cut at, the run ends with one line and exit 2, unless the
    cut only dropped padding after the end-of-archive blocks (then it trains on every image). A cut
    at a member boundary used to read as a smaller archive (fewer classes, or silently fewer images)."""
    base = tmp_path_factory.mktemp('cut')
    tars = _truncated_tars(data, str(base / 'tars'), keep)
    with tarfile.open(os.path.join(data['tar'], 'train.tar')) as tf:
        last = max(tf.getmembers(), key=lambda m: m.offset_data)
        complete = last.offset_data + -(-last.size // 512) * 512 + 1024  # data, then the two zero blocks
    rc, out, err = train(tars, str(base / 'out'), data_set='folder', batch_size=2)
    assert_one_line_or_success(rc, err, out)
    assert rc == (0 if os.path.getsize(os.path.join(tars, 'train.tar')) >= complete else 2), err


# ----------------------------------------------------------------------------- resume

def test_resume_with_another_optimizer(data, tmp_path):
    """--opt sgd on an AdamW checkpoint: one line at resume (it was KeyError: 'momentum' at the
    first step)."""
    first = str(tmp_path / 'first')
    rc, out, err = train(data['folder'], first)
    assert rc == 0, err[-2000:]
    ck = os.path.join(first, 'checkpoint-0.pth')
    rc, out, err = train(data['folder'], str(tmp_path / 'second'), '--opt', 'sgd', epochs=2, resume=ck)
    assert rc == 2
    assert err.strip().startswith(f'error: --opt sgd cannot resume {ck}, which was trained with --opt adamw: ')
    assert_one_line_or_success(rc, err)


# ----------------------------------------------------------------------------- export

EXPORT = ['--model', 'hornet_tiny_gf', *SMALL_ARGS, '--input_size', '32', '--format', 'onnx']


@pytest.mark.parametrize('case', ['folder', 'under-a-file', 'read-only', 'write-fails'])
def test_export_output_that_cannot_be_written(case, tmp_path, monkeypatch):
    """--output that is a folder, lies under a file, in a folder we may not write, or whose write
    fails: one line, exit 2, nothing written (they were tracebacks, or a silent export)."""
    (tmp_path / 'afile').write_text('notes')
    (tmp_path / 'ro').mkdir()
    output, message = {
        'folder': (str(tmp_path), f'--output {tmp_path} is a folder; name the file to write, e.g. '
                                  f'{tmp_path}/model.onnx'),
        'under-a-file': (str(tmp_path / 'afile' / 'sub' / 'm.onnx'),
                         f'--output {tmp_path}/afile/sub/m.onnx: {tmp_path}/afile is a file, not a folder'),
        'read-only': (str(tmp_path / 'ro' / 'm.onnx'),
                      f'--output {tmp_path}/ro/m.onnx: the folder {tmp_path}/ro is not writable'),
        'write-fails': (str(tmp_path / 'ro' / 'm.onnx'),
                        f'cannot write --output {tmp_path}/ro/m.onnx: Permission denied'),
    }[case]
    real_access = os.access
    if case == 'read-only':  # chmod does not stop root: ask os.access as an unprivileged user would be answered
        monkeypatch.setattr(os, 'access', lambda p, mode: False if str(p) == str(tmp_path / 'ro')
                            else real_access(p, mode))
    if case == 'write-fails':
        def denied(model, example, path, *a):
            raise PermissionError(13, 'Permission denied', path)
        monkeypatch.setattr(export, 'export_onnx', denied)
    rc, out, err = call(export.main, EXPORT + ['--output', output])
    assert rc == 2 and message in err, err
    assert_one_line_or_success(rc, err)
    assert sorted(os.listdir(tmp_path)) == ['afile', 'ro'] and os.listdir(tmp_path / 'ro') == []


# ----------------------------------------------------------------------------- submitit

@pytest.mark.parametrize('flags, message', [
    (['--device', 'cuda', '--ngpus', '1'],
     'error: --device cuda, but this machine has no visible GPU and --cluster local runs here; pass --device cpu'),
    (['--timeout', '0'], "error: --timeout is the job's time limit in hours and must be at least 1, got 0"),
])
def test_submitit_launch_errors(flags, message, tmp_path, monkeypatch):
    """run_with_submitit.py --cluster local with --device cuda on a machine without a GPU (the tasks
    failed with tracebacks in their logs) and --timeout 0: one line, exit 2, no job started."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    argv = ['--cluster', 'local', '--nodes', '1', '--model', 'hornet_tiny_7x7', '--job_dir', str(tmp_path / 'job'),
            *flags]
    rc, out, err = call(rws.main, argv)
    assert rc == 2 and err.strip() == message, err
    assert not any(n.endswith('.pkl') for _, _, files in os.walk(tmp_path) for n in files)  # nothing submitted


# ----------------------------------------------------------------------------- argument lists

def test_predict_argument_it_cannot_parse():
    """predict.py's usage errors are one line naming the argument (was argparse's usage block)."""
    rc, out, err = call(predict.main, ['--model', 'hornet_tiny_gf', '--checkpoint', 'x.pth', '--topk', 'five', 'a.png'])
    assert rc == 2
    assert err.strip() == "HorNet predict: error: argument --topk: invalid int value: 'five'; see --help"


ENTRIES = {
    'predict': (predict.main, ['--model', '--checkpoint', '--checkpoint_key', '--input_size', '--topk',
                               '--batch_size', '--class_names', '--model_kwargs']),
    'export': (export.main, ['--model', '--checkpoint', '--num_classes', '--input_size', '--format', '--output',
                             '--opset', '--gf_filter', '--model_kwargs', '--rtol']),
    'validate': (validate.main, ['--model', '--checkpoint', '--imagenet_val', '--imagenet_real', '--input_size',
                                 '--batch_size', '--results_file', '--device', '--model_kwargs']),
    'avg_checkpoints': (avg_checkpoints.main, ['--input', '--output', '-n', '--select']),
    'calc_flops': (calc_flops.main, ['--model', '--input_size', '--num_classes']),
    'run_with_submitit': (rws.main, ['--ngpus', '--nodes', '--timeout', '--job_dir', '--model', '--device',
                                     '--batch_size']),
}
# no valid model name among them: no drawn list exports, evaluates or trains for real
JUNK = ['', 'x', '0', '-1', '2.5', 'nan', 'hornet_tiny', 'depths=1', 'base_dim=[', '/nonexistent/file.pth',
        '{tmp}', '{tmp}/afile', '{tmp}/afile/x.onnx', 'cuda', 'onnx', 'hub', 'fft']


@pytest.fixture(scope='module')
def scratch(tmp_path_factory):
    d = tmp_path_factory.mktemp('argv')
    (d / 'afile').write_text('not a checkpoint')
    return str(d)


@given(entry=st.sampled_from(sorted(ENTRIES)), data=st.data())
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_argument_list_exits_0_or_2_in_one_line(entry, data, scratch, monkeypatch):
    """Random flags of a command with careless values (empty, negative, NaN, missing paths, a file
    where a folder belongs, a GPU that is not there): exit 0 or 2, one line, never a traceback."""
    fn, flags = ENTRIES[entry]
    chosen = data.draw(st.lists(st.sampled_from(flags), max_size=4, unique=True))
    argv = []
    for flag in chosen:
        argv += [flag, data.draw(st.sampled_from(JUNK)).format(tmp=scratch)]
    if entry == 'run_with_submitit':  # to SLURM, which is not there: never a real job
        monkeypatch.setenv('PATH', scratch)
        argv += ['--cluster', 'slurm']
    monkeypatch.chdir(scratch)  # a relative path drawn lands here
    before = sorted(os.listdir(scratch))
    rc, out, err = call(fn, argv)
    assert_one_line_or_success(rc, err, out)
    if entry != 'calc_flops':  # a command given junk did not get far enough to write anything
        assert rc == 2 and sorted(os.listdir(scratch)) == before, (argv, out[-500:], err)


def test_one_line_of_any_user_error():
    """The shared formatter: a KeyError without quotes, a DataLoader worker's re-raise by its last
    line, a multi-line message joined into one."""
    import utils
    assert utils.one_line(KeyError('no entry model_ema')) == 'no entry model_ema'
    worker = TrainingError('Caught TrainingError in DataLoader worker process 0.\nOriginal Traceback (most '
                           'recent call last):\n  File "x.py"\nutils.TrainingError: bad label 7')
    assert utils.one_line(worker) == 'bad label 7'
    assert utils.one_line(TrainingError('first\n  second\n')) == 'first second'


@pytest.mark.parametrize('entry', sorted(ENTRIES) + ['main', 'object_detection.train', 'semantic_segmentation.test'])
def test_every_entry_reports_a_user_error_in_one_line(entry, monkeypatch):
    """The rule is applied at each command's entry: a user error raised anywhere inside (here: while
    parsing the arguments) is ``error: <one line>`` on stderr and exit 2."""
    import argparse
    import importlib

    import utils

    def fail(*a, **kw):
        raise utils.TrainingError('a bad input,\n  told on two lines')
    if entry == 'main':  # main.run reports through the log main() sets up first
        monkeypatch.setattr(train_main, 'main', lambda args: (utils.setup_logging(), fail()))
        fn = train_main.run
        argv = ['--model', 'hornet_tiny_gf', '--device', 'cpu']
    else:
        monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', fail)
        fn = ENTRIES[entry][0] if entry in ENTRIES else importlib.import_module(entry).main
        argv = []
    rc, out, err = call(fn, argv)
    assert rc == 2 and err.strip() == 'error: a bad input, told on two lines', err
