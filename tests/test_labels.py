"""Labels mean the same thing everywhere: the class list a model is trained with is saved in its
checkpoints and compared with the data of every evaluation (per-epoch validation, ``--eval``,
resume, ``--finetune`` with the same head, predict.py); folders are scanned one way (no hidden
classes, link loops entered once, split folders are not classes). Named rows for the cases users
hit, and generated layouts (hypothesis) for the invariants."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import datasets
import export
import main as train_main
import predict
import run_dir
from helpers import read_log, tiny_argv
from utils import TrainingError

SIZE = 12  # px of the generated images (the model sees them resized to 32)


def write_class(folder: str, index: int, n: int, seed: int = 0, mode: str = 'RGB') -> list[str]:
    """``n`` PNGs whose dominant colour channel is ``index % 3``; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = rng.integers(0, 90, size=(SIZE, SIZE, 3)).astype(np.uint8)
        img[..., index % 3] += np.uint8(150)
        path = os.path.join(folder, f'{i:03d}.png')
        Image.fromarray(img).convert(mode).save(path)
        paths.append(path)
    return paths


def make_split(root: str, classes: list[str], n: int = 4, seed: int = 0) -> str:
    for i, c in enumerate(classes):
        write_class(os.path.join(root, c), i, n, seed + i)
    return root


def make_data(root: str, train: list[str], val: list[str], n_train: int = 4, n_val: int = 2) -> str:
    make_split(os.path.join(root, 'train'), train, n_train)
    make_split(os.path.join(root, 'val'), val, n_val, seed=100)
    return root


def argv(data: str, out: str, **kw) -> list[str]:
    flags = dict(epochs=1, batch_size=4, nb_classes=3)
    flags.update(kw)
    return tiny_argv(data, out, **flags)


def run(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = train_main.run(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line_error(rc: int, err: str) -> str:
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err, err
    return err


ABC = ['apple', 'bird', 'cat']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A 1-epoch run on classes apple/bird/cat: (data folder, output folder)."""
    base = tmp_path_factory.mktemp('trained')
    data = make_data(str(base / 'data'), ABC, ABC)
    out = str(base / 'out')
    assert train_main.run(argv(data, out)) == 0
    return data, out


def test_checkpoint_and_hub_config_hold_the_class_list(trained, tmp_path):
    """Every checkpoint main.py writes names its classes in label order; the hub export carries them
    into config.json under the same key."""
    data, out = trained
    for name in ('checkpoint-0.pth', 'checkpoint-best.pth'):
        assert run_dir.load_file(os.path.join(out, name))[run_dir.LABEL_NAMES] == ABC
    hub = str(tmp_path / 'hub')
    assert export.main(['--model', 'hornet_tiny_gf', '--checkpoint', os.path.join(out, 'checkpoint-0.pth'),
                        '--model_kwargs', 'depths=1,1,1,1', 'base_dim=16', '--input_size', '32',
                        '--format', 'hub', '--output', hub]) == 0
    with open(os.path.join(hub, 'config.json')) as f:
        assert json.load(f)['label_names'] == ABC


def test_renamed_val_class_is_an_error_in_training(tmp_path, capsys):
    """A val folder with one renamed class folder (today: Acc@1 0.000, rc 0) stops before training,
    naming both classes; nothing is written."""
    data = make_data(str(tmp_path / 'data'), ABC, ['apple', 'bird', 'kitten'])
    out = str(tmp_path / 'out')
    rc, _, err = run(argv(data, out), capsys)
    err = one_line_error(rc, err)
    assert "only the training data has 'cat'" in err and "has 'kitten'" in err, err
    assert not os.path.exists(os.path.join(out, 'checkpoint-0.pth'))


def test_renamed_val_class_is_an_error_in_eval(trained, tmp_path, capsys):
    """--eval compares the val folder's classes with the checkpoint's, by name."""
    data, out = trained
    other = make_data(str(tmp_path / 'data'), ABC, ['apple', 'bird', 'kitten'])
    rc, _, err = run(argv(other, '', eval='true', resume=os.path.join(out, 'checkpoint-0.pth')), capsys)
    err = one_line_error(rc, err)
    assert f"only checkpoint {out}/checkpoint-0.pth has 'cat'" in err and "'kitten'" in err, err
    # the same classes in the same order: evaluated, and with --nb_classes left out (IMNET's
    # default is 1000) the class count comes from the checkpoint's list
    rc, stdout, err = run(argv(data, '', eval='true', resume=os.path.join(out, 'checkpoint-0.pth'), nb_classes=None),
                          capsys)
    assert rc == 0, err
    assert f'* Acc@1 {read_log(out)[-1]["test_acc1"]:.3f}' in stdout


def test_val_classes_in_another_order_are_an_error(tmp_path, capsys):
    """Same names, other order (what a Hugging Face split with its ClassLabel names ordered
    differently gives): named as an order difference."""
    train = datasets.ClassFolder(make_split(str(tmp_path / 't'), ABC))
    with pytest.raises(TrainingError, match="orders its classes differently from the training data: label 0 is "
                                            "'cat' there but 'apple' in the training data"):
        datasets.check_same_classes(['cat', 'bird', 'apple'], datasets.class_names(train), 'validation',
                                    'the training data')


def test_hugging_face_splits_with_other_class_order(tmp_path, capsys):
    """hfds: a validation split whose ClassLabel lists the names in another order is an error."""
    root = tmp_path / 'hf'
    with datasets.hugging_face_datasets() as hf:
        for split, names in (('train', ABC), ('validation', ABC[::-1])):
            features = hf.Features({'image': hf.Image(), 'label': hf.ClassLabel(names=names)})
            rows = []
            for i in range(6):
                buf = tmp_path / f'{split}{i}.png'
                Image.fromarray(np.full((SIZE, SIZE, 3), 40 * i, np.uint8)).save(buf)
                rows.append({'bytes': buf.read_bytes(), 'path': None})
            table = hf.Dataset.from_dict({'image': rows, 'label': [i % 3 for i in range(6)]}, features=features)
            table.to_parquet(str(root / 'data' / f'{split}-00000-of-00001.parquet'))
    rc, _, err = run(argv(str(tmp_path / 'cache'), str(tmp_path / 'out'), data_set=f'hfds/{root}', nb_classes=3),
                     capsys)
    assert rc == 2 and 'Traceback' not in err, err
    last = err.strip().splitlines()[-1]  # above it: Hugging Face's own progress bars
    assert last.startswith('error: --data_set hfds/') and last.endswith(
        "validation-00000-of-00001.parquet orders its classes differently from the data set's ClassLabel: "
        "label 0 is 'cat' there but 'apple' in the data set's ClassLabel; give both the same class order"), last


def test_count_advice_does_not_go_in_circles(tmp_path, capsys):
    """IMNET with 3 train and 2 val classes: once --nb_classes matches the training folders, the
    error names the class the val folder lacks (it used to say 'pass --nb_classes 2', and then
    'pass --nb_classes 3')."""
    data = make_data(str(tmp_path / 'data'), ABC, ABC[:2])
    rc, _, err = run(argv(data, '', nb_classes=None), capsys)
    assert 'has 3 class folders but --nb_classes is 1000; pass --nb_classes 3' in one_line_error(rc, err)
    rc, _, err = run(argv(data, '', nb_classes=3), capsys)
    err = one_line_error(rc, err)
    assert "only the training data has 'cat'" in err and '--nb_classes' not in err, err


def test_hidden_folders_are_never_classes(tmp_path, capsys):
    """`.ipynb_checkpoints` beside the class folders and inside one (holding an image copy) is no
    class and adds no image, for IMNET, image_folder and timm's folder reader alike."""
    data = make_data(str(tmp_path / 'data'), ABC, ABC)
    for split in ('train', 'val'):
        hidden = os.path.join(data, split, '.ipynb_checkpoints')
        write_class(hidden, 0, 1)
        shutil.copytree(hidden, os.path.join(data, split, 'cat', '.ipynb_checkpoints'))
        with open(os.path.join(data, split, 'bird', '.DS_Store'), 'wb') as f:
            f.write(b'\0\0\0\1Bud1')
    for data_set, path in (('IMNET', data), ('image_folder', os.path.join(data, 'train')),
                           ('folder', data)):
        args = train_main.parse_args(argv(path, '', data_set=data_set, eval_data_path=os.path.join(data, 'val')))
        ds, n = datasets.build_dataset(True, args)
        assert (datasets.class_names(ds), n, len(ds)) == (ABC, 3, 12), data_set
    rc, _, err = run(argv(data, str(tmp_path / 'out')), capsys)
    assert rc == 0, err
    assert run_dir.load_file(str(tmp_path / 'out' / 'checkpoint-0.pth'))['label_names'] == ABC


def test_image_folder_at_the_split_root_is_an_error(tmp_path, capsys):
    """image_folder pointed at a folder holding train/ and val/ (today a 2-class model) says what
    to pass instead."""
    data = make_data(str(tmp_path / 'data'), ABC, ABC)
    rc, _, err = run(argv(data, '', data_set='image_folder', eval_data_path=os.path.join(data, 'val')), capsys)
    err = one_line_error(rc, err)
    assert f'{data} holds the split folders train/ and val/, not one folder per class' in err, err
    assert f'--data_set IMNET --data_path {data}' in err


@pytest.mark.parametrize('data_set', ['IMNET', 'folder'])
def test_symlink_loop_neither_multiplies_nor_hangs(tmp_path, data_set):
    """Links back to the class folder and to the split root (two per folder: a loop that
    os.walk(followlinks=True) walks exponentially) leave every image listed once."""
    data = make_data(str(tmp_path / 'data'), ABC, ABC)
    for c in ABC:
        os.symlink('..', os.path.join(data, 'train', c, 'up'))
        os.symlink('.', os.path.join(data, 'train', c, 'self'))
    args = train_main.parse_args(argv(data, '', data_set=data_set))
    ds, n = datasets.build_dataset(True, args)
    assert (datasets.class_names(ds), n, len(ds)) == (ABC, 3, 12)


def test_class_map_entry_without_images_is_an_error(tmp_path, capsys):
    data = make_data(str(tmp_path / 'data'), ABC, ABC)
    class_map = tmp_path / 'map.txt'
    class_map.write_text('apple\nbird\ncat\ndog\n')
    rc, _, err = run(argv(data, '', data_set='folder', class_map=str(class_map), nb_classes=4), capsys)
    err = one_line_error(rc, err)
    assert f"--class_map {class_map} names classes without images: 'dog'" in err, err


def test_resume_and_finetune_compare_the_class_list(trained, tmp_path, capsys):
    """Resuming on data whose classes differ is an error; so is --finetune keeping a head trained on
    other classes (--head_map drop starts the head fresh and trains)."""
    _, out = trained
    other = make_data(str(tmp_path / 'data'), ['apple', 'bird', 'dog'], ['apple', 'bird', 'dog'])
    rc, _, err = run(argv(other, str(tmp_path / 'run'), resume=os.path.join(out, 'checkpoint-0.pth'), epochs=2),
                     capsys)
    err = one_line_error(rc, err)
    assert "only checkpoint" in err and "'cat'" in err and "'dog'" in err, err
    ft = argv(other, str(tmp_path / 'ft'), finetune=os.path.join(out, 'checkpoint-0.pth'))
    rc, _, err = run(ft, capsys)
    assert 'or pass --head_map drop to start the head fresh' in one_line_error(rc, err)
    rc, _, err = run(ft + ['--head_map', 'drop'], capsys)
    assert rc == 0, err


def test_predict_uses_and_checks_the_checkpoint_class_names(trained, tmp_path, capsys):
    data, out = trained
    ckpt = os.path.join(out, 'checkpoint-0.pth')
    img = os.path.join(data, 'val', 'bird', '000.png')
    base = ['--model', 'hornet_tiny_gf', '--checkpoint', ckpt, '--model_kwargs', 'depths=1,1,1,1', 'base_dim=16']
    assert predict.main(base + ['--topk', '3', img]) == 0
    printed = capsys.readouterr().out
    assert sorted(line.split()[-1] for line in printed.splitlines()[1:]) == ABC
    names = tmp_path / 'names.txt'
    names.write_text('apple\ncat\nbird\n')
    assert predict.main(base + ['--class_names', str(names), img]) == 2
    err = capsys.readouterr().err
    assert f'--class_names {names} orders its classes differently from checkpoint {ckpt}' in err


def test_predict_top1_equals_eval_accuracy(trained, tmp_path, capsys):
    """predict.py and main.py --eval preprocess alike: predict's top-1 over the val images equals
    the evaluation's Acc@1 on the same checkpoint and images."""
    data, out = trained
    ckpt = os.path.join(out, 'checkpoint-0.pth')
    val, truth = _val_images(tmp_path)
    acc, correct = _eval_and_predict(data, ckpt, val, truth, capsys)
    assert round(100 * correct / len(truth), 3) == acc
    assert 0 < correct < len(truth)  # neither trivially all right nor all wrong


def test_eval_normalises_as_the_checkpoint_was_trained(trained, tmp_path, capsys):
    """A checkpoint trained with ``--imagenet_default_mean_and_std false`` (Inception's mean/std):
    ``--eval`` with the other normalisation is one line, exit 2, naming the flag to pass; with the
    flag, its Acc@1 equals predict.py's top-1 (which reads the flag from the checkpoint)."""
    data, out = trained
    ckpt = torch.load(os.path.join(out, 'checkpoint-0.pth'), map_location='cpu', weights_only=True)
    ckpt['args']['imagenet_default_mean_and_std'] = False
    path = str(tmp_path / 'inception_norm.pth')
    torch.save(ckpt, path)
    val, truth = _val_images(tmp_path)
    rc, _, err = run(argv(data, '', data_set='image_folder', data_path=os.path.join(data, 'train'),
                          eval_data_path=val, eval='true', resume=path), capsys)
    assert rc == 2 and err.strip().splitlines()[-1].endswith(
        f'{path} was trained with --imagenet_default_mean_and_std false; evaluate it with the same '
        'normalisation: pass --imagenet_default_mean_and_std false'), err
    acc, correct = _eval_and_predict(data, path, val, truth, capsys, imagenet_default_mean_and_std='false')
    assert round(100 * correct / len(truth), 3) == acc


def _val_images(tmp_path) -> tuple[str, dict[str, str]]:
    """A val folder of the three classes, images of several sizes and aspect ratios (where a
    different resize or crop would show), and each image's class."""
    val = str(tmp_path / 'val')
    rng = np.random.default_rng(3)
    truth = {}
    for i, c in enumerate(ABC):
        os.makedirs(os.path.join(val, c))
        for k in range(6):
            h, w = int(rng.integers(8, 60)), int(rng.integers(8, 60))
            img = rng.integers(0, 120, size=(h, w, 3)).astype(np.uint8)
            img[..., i] += np.uint8(25 * k)  # from none (a guess) to clear
            path = os.path.join(val, c, f'{k}.png')
            Image.fromarray(img).save(path)
            truth[path] = c
    return val, truth


def _eval_and_predict(data, ckpt, val, truth, capsys, **flags) -> tuple[float, int]:
    """main.py --eval's Acc@1 on ``val``, and how many of its images predict.py's top-1 gets right."""
    rc, stdout, err = run(argv(data, '', data_set='image_folder', data_path=os.path.join(data, 'train'),
                               eval_data_path=val, eval='true', resume=ckpt, **flags), capsys)
    assert rc == 0, err
    acc = float(stdout.split('* Acc@1 ')[1].split()[0])
    assert predict.main(['--model', 'hornet_tiny_gf', '--checkpoint', ckpt, '--topk', '1', '--model_kwargs',
                         'depths=1,1,1,1', 'base_dim=16', *truth]) == 0
    lines = capsys.readouterr().out.splitlines()
    top1 = {lines[i][:-1]: lines[i + 1].split()[-1] for i in range(0, len(lines), 2)}
    return acc, sum(top1[p] == c for p, c in truth.items())


# ----------------------------------------------------------------------------- generated layouts

NAMES = st.sampled_from(['a', 'b', 'c', 'dog', 'Zebra', '10', '2', 'x y', 'ü'])


@st.composite
def layouts(draw):
    """Train classes, val classes (the same, reordered on disk is irrelevant, or with one changed),
    hidden folders, symlink loops, broken and odd-mode images."""
    train = sorted(draw(st.sets(NAMES, min_size=2, max_size=3)))
    val = list(train)
    change = draw(st.sampled_from(['same', 'same', 'renamed', 'missing', 'extra']))
    spare = [n for n in ['a', 'b', 'c', 'dog', 'Zebra', '10', '2', 'x y', 'ü'] if n not in train]
    if change == 'renamed':
        val[draw(st.integers(0, len(val) - 1))] = spare[0]
    elif change == 'missing':
        val.pop()
    elif change == 'extra':
        val.append(spare[0])
    return dict(train=train, val=sorted(val),
                hidden=draw(st.booleans()), loop=draw(st.booleans()),
                odd=draw(st.sampled_from(['none', 'I;16', 'F', 'P', 'LA', 'CMYK', 'L'])),
                broken=draw(st.sampled_from(['none', 'none', 'none', 'text', 'truncated'])))


def build_layout(root: str, lay: dict) -> None:
    make_data(root, lay['train'], lay['val'], n_train=3, n_val=2)
    first = os.path.join(root, 'train', lay['train'][0])
    if lay['hidden']:
        write_class(os.path.join(root, 'train', '.ipynb_checkpoints'), 0, 2)
        write_class(os.path.join(first, '.hidden'), 0, 1)
    if lay['loop']:
        os.symlink('..', os.path.join(first, 'up'))
        os.symlink('.', os.path.join(first, 'self'))
    if lay['odd'] != 'none':
        path = os.path.join(first, 'odd.png' if lay['odd'] != 'F' and lay['odd'] != 'CMYK' else 'odd.tif')
        arr = np.linspace(0, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
        if lay['odd'] == 'I;16':
            Image.fromarray((arr * 65535).astype(np.uint16)).save(path)
        elif lay['odd'] == 'F':
            Image.fromarray(arr).save(path)
        else:
            Image.fromarray((arr * 255).astype(np.uint8)).convert(lay['odd']).save(path)
    if lay['broken'] == 'text':
        with open(os.path.join(first, 'broken.png'), 'w') as f:
            f.write('not an image')
    elif lay['broken'] == 'truncated':
        with open(os.path.join(first, '000.png'), 'r+b') as f:
            f.truncate(40)


def _images(root: str, exts: tuple[str, ...]) -> int:
    """Image files under ``root``, each counted once: no hidden names, links not followed."""
    n = 0
    for _, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith('.')]
        n += sum(1 for f in files if not f.startswith('.') and f.endswith(exts))
    return n


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lay=layouts(), data_set=st.sampled_from(['IMNET', 'folder']))
def test_generated_layouts_scan_consistently(tmp_path_factory, lay, data_set):
    """Whatever the layout: the training data's classes are exactly its visible class folders, each
    image is listed once (loops and hidden folders add none), and the evaluation data is accepted
    exactly when it names the same classes in the same order, else a TrainingError names them."""
    root = str(tmp_path_factory.mktemp('layout'))
    build_layout(root, lay)
    args = train_main.parse_args(argv(root, '', data_set=data_set, nb_classes=len(lay['train'])))
    train, n = datasets.build_dataset(True, args)
    assert datasets.class_names(train) == sorted(lay['train'], key=_natural if data_set == 'folder' else None)
    assert n == len(lay['train']) and len(train) == _images(os.path.join(root, 'train'), ('.png', '.tif'))
    names = datasets.class_names(train)
    if sorted(lay['val']) == sorted(lay['train']):
        val, m = datasets.build_dataset(False, args, names, 'the training data')
        assert m == n and datasets.class_names(val) == names
    else:
        with pytest.raises(TrainingError, match='different classes') as e:
            datasets.build_dataset(False, args, names, 'the training data')
        for c in set(lay['train']) ^ set(lay['val']):
            assert repr(c) in str(e.value)


def _natural(s):
    from timm.utils.misc import natural_key
    return natural_key(s)


@pytest.mark.slow
@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lay=layouts())
def test_generated_layouts_train_consistently(tmp_path_factory, capsys, lay):
    """main.run on generated layouts: exit 0 or 2 with one line (never a traceback); a run that
    exits 0 saved the training data's class list, evaluated on the same list, and the accuracy it
    logged equals a re-evaluation of its checkpoint."""
    root = str(tmp_path_factory.mktemp('layout'))
    build_layout(root, lay)
    out = os.path.join(root, 'out')
    torch.manual_seed(0)
    rc, _, err = run(argv(root, out, batch_size=2, nb_classes=len(lay['train'])), capsys)
    event(f'exit {rc}')
    assert rc in (0, 2)
    if rc == 2:
        one_line_error(rc, err)
    consistent = sorted(lay['val']) == sorted(lay['train'])
    if rc == 2:
        assert not consistent or lay['broken'] != 'none'
        return
    assert consistent and lay['broken'] == 'none'
    assert run_dir.load_file(os.path.join(out, 'checkpoint-0.pth'))['label_names'] == sorted(lay['train'])
    logged = read_log(out)[-1]['test_acc1']
    result = train_main.main(train_main.parse_args(argv(root, '', eval='true', nb_classes=None,
                                                        resume=os.path.join(out, 'checkpoint-0.pth'))))
    assert result['test_acc1'] == pytest.approx(logged, abs=1e-9)
