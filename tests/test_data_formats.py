"""Data at scale through timm's dataset factory: the same tiny colour-coded images as an
ImageNet-style folder, WebDataset tar shards, a Hugging Face parquet data set and tarred
ImageFolders. Each format must give every rank the same number of samples per epoch as the
folder does, every sample exactly once per epoch over the ranks, a fresh order each epoch, a
model that learns, and (streams included) an exact resume."""
import json
import os
import signal
import sys
import tarfile
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import datasets
import main as train_main
from helpers import MAIN, free_port, make_image_folder, read_log, run_python, stop_inside_epoch_1, tiny_argv
from utils import TrainingError

os.environ.setdefault('HF_DATASETS_OFFLINE', '1')  # read when Hugging Face's package is imported; tests never download
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 16, 8
N_TRAIN, N_VAL = CLASSES * TRAIN_PER_CLASS, CLASSES * VAL_PER_CLASS  # 48, 24
BATCH, WORLD = 4, 2
# folder + DistributedSampler: ceil(48 / 2) = 24 samples per rank, 24 // 4 = 6 batches (drop_last)
FOLDER_BATCHES_PER_RANK = (N_TRAIN // WORLD) // BATCH


def _split_samples(folder: str, split: str):
    """(key, png bytes, label) of an ImageNet-style split, in sorted order."""
    out = []
    for c in sorted(os.listdir(os.path.join(folder, split))):
        for f in sorted(os.listdir(os.path.join(folder, split, c))):
            with open(os.path.join(folder, split, c, f), 'rb') as fh:
                out.append((f'{c}_{f[:-4]}', fh.read(), int(c.split('_')[1])))
    return out


def make_webdataset(folder: str, root: str) -> str:
    """4 train / 2 validation shards of the folder's images (classes mixed over the shards) and
    the ``_info.json`` timm reads split sizes from."""
    import webdataset as wds
    os.makedirs(root, exist_ok=True)
    info = {'name': 'tiny', 'splits': {}}
    for split, src, shards in (('train', 'train', 4), ('validation', 'val', 2)):
        samples = _split_samples(folder, src)
        order = np.random.default_rng(1).permutation(len(samples))
        names, lengths = [], []
        for k in range(shards):
            name, part = f'tiny-{split}-{k:04d}.tar', order[k::shards]
            with wds.TarWriter(os.path.join(root, name)) as w:
                for i in part:
                    key, png, label = samples[i]
                    w.write({'__key__': key, 'png': png, 'cls': label})
            names.append(name)
            lengths.append(len(part))
        info['splits'][split] = dict(name=split, num_samples=sum(lengths), filenames=names, shard_lengths=lengths)
    with open(os.path.join(root, '_info.json'), 'w') as f:
        json.dump(info, f)
    return root


def make_hf_parquet(folder: str, root: str) -> str:
    """A local Hugging Face data set (parquet with an ``image`` and a ``ClassLabel`` column, the
    layout of hub image data sets), rows in the folder's sorted order."""
    with datasets.hugging_face_datasets() as hf:
        features = hf.Features({'image': hf.Image(),
                                'label': hf.ClassLabel(names=[f'class_{c}' for c in range(CLASSES)])})
        for split, src in (('train', 'train'), ('validation', 'val')):
            samples = _split_samples(folder, src)
            table = hf.Dataset.from_dict({'image': [{'bytes': b, 'path': None} for _, b, _ in samples],
                                          'label': [label for _, _, label in samples]}, features=features)
            table.to_parquet(os.path.join(root, 'data', f'{split}-00000-of-00001.parquet'))
    return root


def make_tarred_folder(folder: str, root: str) -> str:
    """``root/train.tar`` and ``root/val.tar``, each a tarred ImageFolder (class folders inside)."""
    os.makedirs(root, exist_ok=True)
    for split in ('train', 'val'):
        with tarfile.open(os.path.join(root, f'{split}.tar'), 'w') as tf:
            for c in sorted(os.listdir(os.path.join(folder, split))):
                tf.add(os.path.join(folder, split, c), arcname=c)
    return root


@pytest.fixture(scope='module')
def formats(tmp_path_factory):
    base = tmp_path_factory.mktemp('formats')
    folder = make_image_folder(str(base / 'folder'), classes=CLASSES, train_per_class=TRAIN_PER_CLASS,
                               val_per_class=VAL_PER_CLASS)
    return dict(base=str(base), folder=folder, wds=make_webdataset(folder, str(base / 'wds')),
                hf=make_hf_parquet(folder, str(base / 'hf')), tar=make_tarred_folder(folder, str(base / 'tars')))


def _fingerprint(img) -> int:
    return zlib.crc32(np.asarray(img).tobytes())


def _samples(ds):
    """(image fingerprint, label) of every sample, in order."""
    ds.transform = _fingerprint
    return [(int(x), int(y)) for x, y in torch.utils.data.DataLoader(ds, batch_size=None)]


# ----------------------------------------------------------------------------- flags and readers

def test_data_set_flag_accepts_old_and_timm_names():
    for name in ('IMNET', 'image_folder', 'CIFAR', 'DEMO', 'MNIST', 'folder', 'wds/imagenet',
                 'hfds/timm/mini-imagenet', 'HFDS/user/set', 'hfids/x', 'torch/cifar10'):
        assert train_main.parse_args(['--data_set', name]).data_set == name
    args = train_main.parse_args([])
    assert (args.data_set, args.train_split, args.val_split, args.class_map) == ('IMNET', 'train', 'validation', '')
    assert (args.train_num_samples, args.val_num_samples, args.dataset_download) == (0, 0, False)
    for bad in ('imagenet', 'wds/', 'foo/bar', 'imnet'):
        with pytest.raises(SystemExit) as e:
            train_main.parse_args(['--data_set', bad])
        assert e.value.code == 2


def _args(data_set: str, data_path: str, **kw):
    flags = dict(data_set=data_set, data_path=data_path, nb_classes=CLASSES, input_size=32, device='cpu',
                 batch_size=BATCH, num_workers=0)
    flags.update(kw)
    return train_main.parse_args(tiny_argv(data_path, '', **flags))


def test_tarred_folder_and_class_map(formats):
    """``--data_set folder`` finds ``train.tar`` / ``val.tar`` (a validation-split synonym) and
    reads the same 48 / 24 labelled images as the loose folder; a .txt class map renumbers
    classes; a .pkl class map (timm would unpickle it) and a missing split are refused."""
    folder_train, n = datasets.build_dataset(True, _args('IMNET', formats['folder']))
    folder_val, _ = datasets.build_dataset(False, _args('IMNET', formats['folder']))
    tar_train, n_tar = datasets.build_dataset(True, _args('folder', formats['tar']))
    tar_val, _ = datasets.build_dataset(False, _args('folder', formats['tar']))
    assert n == n_tar == CLASSES
    ref_train, ref_val = _samples(folder_train), _samples(folder_val)
    assert len(ref_train) == N_TRAIN and len(ref_val) == N_VAL
    assert sorted(_samples(tar_train)) == sorted(ref_train)
    assert sorted(_samples(tar_val)) == sorted(ref_val)

    # a single .tar file as --data_path (here a tar of per-class tars, as ImageNet's train tar),
    # evaluation on --eval_data_path
    inner = os.path.join(formats['base'], 'per_class')
    os.makedirs(inner, exist_ok=True)
    outer = os.path.join(formats['base'], 'ILSVRC_like_train.tar')
    with tarfile.open(outer, 'w') as tf:
        for c in sorted(os.listdir(os.path.join(formats['folder'], 'train'))):
            with tarfile.open(os.path.join(inner, f'{c}.tar'), 'w') as ctf:
                for f in sorted(os.listdir(os.path.join(formats['folder'], 'train', c))):
                    ctf.add(os.path.join(formats['folder'], 'train', c, f), arcname=f)
            tf.add(os.path.join(inner, f'{c}.tar'), arcname=f'{c}.tar')
    single = _args('folder', outer, eval_data_path=os.path.join(formats['folder'], 'val'))
    assert sorted(_samples(datasets.build_dataset(True, single)[0])) == sorted(ref_train)
    assert sorted(_samples(datasets.build_dataset(False, single)[0])) == sorted(ref_val)
    with pytest.raises(TrainingError, match='is the training tar; give --eval_data_path'):
        datasets.build_dataset(False, _args('folder', outer))

    class_map = os.path.join(formats['base'], 'reversed.txt')
    with open(class_map, 'w') as f:
        f.write('class_2\nclass_1\nclass_0\n')
    mapped, _ = datasets.build_dataset(True, _args('folder', formats['folder'], class_map=class_map))
    assert sorted(_samples(mapped)) == sorted((x, CLASSES - 1 - y) for x, y in ref_train)

    with pytest.raises(TrainingError, match=r'give a \.txt file'):
        datasets.build_dataset(True, _args('folder', formats['folder'], class_map=class_map[:-4] + '.pkl'))
    with pytest.raises(TrainingError, match=r'no test sub-folder or test\.tar'):
        datasets.build_dataset(False, _args('folder', formats['folder'], val_split='test'))
    with pytest.raises(TrainingError, match='has 3 classes but --nb_classes is 5; pass --nb_classes 3'):
        datasets.build_dataset(True, _args('folder', formats['tar'], nb_classes=5))
    with pytest.raises(TrainingError, match='must be the folder of the .tar shards'):
        datasets.build_dataset(True, _args('wds/tiny', os.path.join(formats['base'], 'missing')))


# ----------------------------------------------------------------------------- image file types

def _write_image(path: str, seed: int) -> np.ndarray:
    """A tiny 8x8 image saved in the format its suffix names (.pgm grey, the others RGB); returns
    the pixels written."""
    rng = np.random.default_rng(seed)
    grey = path.lower().endswith('.pgm')
    arr = rng.integers(0, 256, size=(8, 8) if grey else (8, 8, 3), dtype=np.uint8)
    fmt = Image.registered_extensions()[os.path.splitext(path)[1].lower()]
    Image.fromarray(arr).save(path, format=fmt)
    return arr


def _folder_sources(root: str, n_classes: int) -> dict[str, list[tuple[str, int, int]]]:
    """(path relative to the class folders' parent, label, decoded-pixel fingerprint) of every sample
    that ``image_folder``, ``folder`` on ``root`` and ``folder`` on a tar of ``root`` list."""
    tar = root + '.tar'
    with tarfile.open(tar, 'w') as tf:
        for name in sorted(os.listdir(root)):
            tf.add(os.path.join(root, name), arcname=name)
    out = {}
    for source, data_set, path in (('image_folder', 'image_folder', root), ('folder', 'folder', root),
                                   ('folder tar', 'folder', tar)):
        ds, n = datasets.build_dataset(True, _args(data_set, path, nb_classes=n_classes))
        assert n == n_classes
        ds.transform = lambda img: _fingerprint(datasets.to_rgb(img))
        names = ([os.path.relpath(p, root) for p, _ in ds.samples] if data_set == 'image_folder'
                 else list(ds.filenames()))
        decoded = [ds[i] for i in range(len(ds))]
        out[source] = sorted((name, int(y), int(x)) for name, (x, y) in zip(names, decoded, strict=True))
    return out


_SUFFIXES = st.sampled_from(datasets.IMAGE_EXTENSIONS).flatmap(lambda e: st.sampled_from([e, e.upper()]))
_OTHER_FILES = st.lists(st.sampled_from(['notes.txt', 'labels.csv', 'meta.json', 'list.npy', 'README', '.DS_Store',
                                         'x.gif.txt', 'raw.mat']), max_size=3, unique=True)


@settings(max_examples=15, deadline=None)
@given(classes=st.lists(st.tuples(st.lists(_SUFFIXES, min_size=1, max_size=4), _OTHER_FILES), min_size=1, max_size=3))
def test_every_folder_source_reads_the_same_image_files(tmp_path_factory, classes):
    """Class folders holding images of any suffix of ``datasets.IMAGE_EXTENSIONS`` (any case), each
    written in its format, and files that are not images: ``image_folder``, ``folder`` on the
    folder and ``folder`` on a tar of it list the same (path, label) samples, every image file
    once, and decode each to the same pixels."""
    root = str(tmp_path_factory.mktemp('types') / 'data')
    expected = []
    for i, (suffixes, others) in enumerate(classes):
        folder = os.path.join(root, f'class_{i}')
        os.makedirs(folder)
        for j, suffix in enumerate(suffixes):
            _write_image(os.path.join(folder, f'img{j}{suffix}'), 10 * i + j)
            expected.append((f'class_{i}/img{j}{suffix}', i))
        for name in others:
            with open(os.path.join(folder, name), 'w') as f:
                f.write('not an image')
    found = _folder_sources(root, len(classes))
    assert [(p, y) for p, y, _ in found['image_folder']] == sorted(expected)
    assert found['folder'] == found['image_folder'] == found['folder tar']


def test_folder_of_tiff_and_bmp_files(tmp_path):
    """A folder of .tif and .bmp images (no JPEG or PNG): every folder source reads all of them, with
    the pixels written (timm's own list, .png .jpg .jpeg, found none)."""
    root = str(tmp_path / 'data')
    written = {}
    for c, suffixes in (('scans', ['.tif', '.tiff', '.TIF']), ('shots', ['.bmp', '.BMP'])):
        os.makedirs(os.path.join(root, c))
        for j, suffix in enumerate(suffixes):
            name = f'{c}/{j}{suffix}'
            written[name] = _fingerprint(_write_image(os.path.join(root, name), len(written)))
    found = _folder_sources(root, 2)
    expected = sorted((name, int(name.startswith('shots')), fp) for name, fp in written.items())
    assert found == {'image_folder': expected, 'folder': expected, 'folder tar': expected}


def test_webdataset_keys_are_the_folder_suffixes():
    """``wds/`` samples are read from the members the folder sources read, timm's keys first."""
    assert datasets.WDS_IMAGE_KEYS.split(';') == [e[1:] for e in datasets.IMAGE_EXTENSIONS]
    assert datasets.WDS_IMAGE_KEYS.startswith('jpg;png;webp;')


def test_webdataset_split_named_by_shards(formats):
    """The documented brace form ``--train_split 'NAME-{0000..0003}.tar|COUNT'`` replaces
    ``_info.json``: the training stream reports the count, evaluation reads every shard once."""
    args = _args('wds/tiny', formats['wds'], train_split='tiny-train-{0000..0003}.tar|48',
                 val_split='tiny-validation-{0000..0001}.tar|24')
    train, n = datasets.build_dataset(True, args)
    val, _ = datasets.build_dataset(False, args)
    assert datasets.is_stream(train) and len(train) == N_TRAIN and n == CLASSES
    image, label = next(iter(val))  # our eval transform: 16 px images resized to --input_size 32, normalised
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and image.min() < 0 and label in (0, 1, 2)
    folder_val, _ = datasets.build_dataset(False, _args('IMNET', formats['folder']))
    assert sorted(_samples(val)) == sorted(_samples(folder_val))


def test_hugging_face_package_and_ours_share_the_name(formats):
    """Our ``datasets`` module keeps its name; Hugging Face's is reachable inside the context and
    an hfds data set reads the parquet rows in order, with the ClassLabel's class count."""
    ours = sys.modules['datasets']
    with datasets.hugging_face_datasets() as hf:
        assert hasattr(hf, 'load_dataset') and sys.modules['datasets'] is hf
    assert sys.modules['datasets'] is ours and hasattr(ours, 'build_dataset')
    hf_val, n = datasets.build_dataset(False, _args(f'hfds/{formats["hf"]}', os.path.join(formats['base'], 'cache')))
    folder_val, _ = datasets.build_dataset(False, _args('IMNET', formats['folder']))
    image, label = hf_val[0]
    assert image.shape == (3, 32, 32) and image.min() < 0 and label == 0
    assert n == CLASSES and _samples(hf_val) == _samples(folder_val)


# ----------------------------------------------------------------------------- two processes

SHARD_SCRIPT = '''
import json, sys, zlib
import numpy as np, torch, torch.distributed as dist
import datasets, main, utils

def fingerprint(img):
    return zlib.crc32(np.asarray(img).tobytes())

runs, out = json.load(open(sys.argv[1])), {}
for i, (label, argv) in enumerate(runs.items()):
    args = main.parse_args(argv)
    if i == 0:
        utils.init_distributed_mode(args)
    rank, world = utils.get_rank(), utils.get_world_size()
    res = {}
    train, _ = datasets.build_dataset(True, args)
    train.transform = fingerprint
    loader = main._loader(train, datasets.build_train_sampler(train, world, rank, args.seed), args,
                          args.batch_size, True, torch.device('cpu'))
    res['batches'] = len(loader)
    for epoch in (0, 1):  # what main.py does at the start of each epoch
        datasets.set_epoch(loader, epoch, args.seed, rank)
        utils.seed_everything(utils.seed_for(args.seed, rank, epoch))
        res[f'epoch{epoch}'] = [int(x) for b, _ in loader for x in b]
    val, _ = datasets.build_dataset(False, args)
    val.transform = fingerprint
    sampler = None if datasets.is_stream(val) else datasets.ShardedEvalSampler(val, world, rank)
    res['val'] = [int(x) for b, _ in main._loader(val, sampler, args, 6, False, torch.device('cpu')) for x in b]
    gathered = [None] * world
    dist.all_gather_object(gathered, res)
    out[label] = gathered
if utils.get_rank() == 0:
    json.dump(out, open(sys.argv[2], 'w'))
dist.destroy_process_group()
'''


def _torchrun(args, timeout=300):
    return run_python(['-m', 'torch.distributed.run', f'--nproc_per_node={WORLD}', f'--master_port={free_port()}',
                       *args], timeout=timeout)


@pytest.mark.slow
def test_each_rank_reads_its_share_once_per_epoch(formats, tmp_path):
    """2 gloo processes, the loaders main.py builds: per rank 24 samples = 6 batches of 4 per
    epoch in every format (the folder's DistributedSampler count); over both ranks each of the
    48 training images exactly once per epoch, in a new order in epoch 1; each of the 24
    validation images exactly once. WebDataset with 0 and 1 loader workers per rank; hfds reads
    in the folder's exact order (same sampler over the same rows); hfids streams the parquet."""
    common = ['--nb_classes', '3', '--device', 'cpu', '--batch_size', str(BATCH), '--input_size', '32',
              '--num_workers', '0']
    cache = os.path.join(str(tmp_path), 'hf_cache')
    runs = {
        'folder': common + ['--data_set', 'IMNET', '--data_path', formats['folder']],
        'wds': common + ['--data_set', 'wds/tiny', '--data_path', formats['wds']],
        'wds_1_worker': common + ['--data_set', 'wds/tiny', '--data_path', formats['wds'], '--num_workers', '1'],
        'hfds': common + ['--data_set', f'hfds/{formats["hf"]}', '--data_path', cache],
        'hfids': common + ['--data_set', f'hfids/{formats["hf"]}', '--data_path', cache,
                           '--train_num_samples', str(N_TRAIN), '--val_num_samples', str(N_VAL)],
    }
    spec, script, result = tmp_path / 'runs.json', tmp_path / 'shards.py', tmp_path / 'out.json'
    spec.write_text(json.dumps(runs))
    script.write_text(SHARD_SCRIPT)
    res = _torchrun([str(script), str(spec), str(result)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(result.read_text())
    folder = out['folder']
    all_train = set(folder[0]['epoch0']) | set(folder[1]['epoch0'])
    all_val = set(folder[0]['val']) | set(folder[1]['val'])
    assert len(all_train) == N_TRAIN and len(all_val) == N_VAL
    for label, ranks in out.items():
        assert [r['batches'] for r in ranks] == [FOLDER_BATCHES_PER_RANK] * WORLD, label
        for epoch in ('epoch0', 'epoch1'):
            assert [len(r[epoch]) for r in ranks] == [N_TRAIN // WORLD] * WORLD, (label, epoch)
            seen = ranks[0][epoch] + ranks[1][epoch]
            assert sorted(seen) == sorted(all_train), (label, epoch)  # each image once over the ranks
        assert all(r['epoch0'] != r['epoch1'] for r in ranks), label  # reshuffled per epoch
        assert [len(r['val']) for r in ranks] == [N_VAL // WORLD] * WORLD, label
        assert sorted(ranks[0]['val'] + ranks[1]['val']) == sorted(all_val), label
    assert out['hfds'] == folder


@pytest.mark.slow
def test_two_epochs_two_processes_on_each_format(formats, tmp_path):
    """torchrun, 2 gloo processes, 2 epochs on the folder, the WebDataset shards and the Hugging
    Face parquet: the same 6 steps per epoch and 24 evaluated images, accuracy well above chance
    (33.3%), identical weights on both ranks; hfds trains exactly as the folder (same losses)."""
    logs = {}
    for label, data_set, path in (('folder', 'IMNET', formats['folder']), ('wds', 'wds/tiny', formats['wds']),
                                  ('hfds', f'hfds/{formats["hf"]}', str(tmp_path / 'hf_cache'))):
        out = str(tmp_path / label)
        res = _torchrun([MAIN,
                         *tiny_argv(path, out, data_set=data_set, epochs=2, batch_size=BATCH, lr=3e-3)])
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert (f'batch 8 ({BATCH} x 1 accumulation x 2 processes), {FOLDER_BATCHES_PER_RANK} steps per epoch'
                in res.stdout), label
        assert 'parameters on 2 ranks: max |difference| from rank 0 = 0\n' in res.stdout, label
        logs[label] = read_log(out)
        log = logs[label]
        assert [r['test_count'] for r in log] == [N_VAL, N_VAL], label
        assert log[-1]['test_acc1'] >= 75.0, (label, log[-1])
        assert log[-1]['train_loss'] < log[0]['train_loss'], label
    assert [r['train_loss'] for r in logs['hfds']] == [r['train_loss'] for r in logs['folder']]
    assert [r['test_acc1'] for r in logs['hfds']] == [r['test_acc1'] for r in logs['folder']]


@pytest.mark.slow
@pytest.mark.parametrize('workers', [0, 1])
def test_webdataset_resume_is_exact(formats, tmp_path, workers):
    """WebDataset shards, one process: 2 epochs straight == 1 epoch then auto-resume for 1 more,
    bitwise (the shard and sample shuffles of an epoch depend on seed, rank and epoch only),
    with the stream read in the main process and by a loader worker."""
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    flags = dict(data_set='wds/tiny', epochs=2, batch_size=BATCH, num_workers=workers, hflip=0.5)
    assert train_main.run(tiny_argv(formats['wds'], straight, **flags)) == 0
    assert train_main.run(tiny_argv(formats['wds'], split, run_epochs=1, **flags)) == 0
    assert not os.path.exists(os.path.join(split, 'checkpoint-1.pth'))
    assert train_main.run(tiny_argv(formats['wds'], split, **flags)) == 0
    a, b = (torch.load(os.path.join(d, 'checkpoint-1.pth'), map_location='cpu', weights_only=True)['model']
            for d in (straight, split))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = read_log(straight)
    assert len(steps) == 2 and steps[0]['train_loss'] != steps[1]['train_loss']


@pytest.mark.slow
def test_webdataset_stop_inside_epoch_repeats_the_epoch_exactly(formats, tmp_path):
    """A stream cannot start inside an epoch: SIGTERM in epoch 1 of a wds/ run writes no step checkpoint
    (exit 143 at a step boundary), and the rerun repeats epoch 1 from its start, ending bitwise as the
    uninterrupted run (what TRAINING.md promises for streams)."""
    straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
    flags = dict(data_set='wds/tiny', epochs=2, batch_size=BATCH, num_workers=0, hflip=0.5, print_freq=1,
                 save_every_minutes=1e-6)
    assert train_main.run(tiny_argv(formats['wds'], straight, **flags)) == 0
    argv = tiny_argv(formats['wds'], stopped, **flags)
    code, out = stop_inside_epoch_1([sys.executable, MAIN, *argv], signal.SIGTERM, 3)
    assert code == 143, out[-3000:]
    assert sorted(f for f in os.listdir(stopped) if f.endswith('.pth')) == ['checkpoint-0.pth', 'checkpoint-best.pth']
    rerun = run_python([MAIN, *argv], timeout=240)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-2000:]
    assert 'continuing at epoch 1' in rerun.stdout and 'continuing epoch 1 at batch' not in rerun.stdout
    a, b = (torch.load(os.path.join(d, 'checkpoint-1.pth'), map_location='cpu', weights_only=True)['model']
            for d in (straight, stopped))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r['train_loss'] for r in read_log(straight)] == [r['train_loss'] for r in read_log(stopped)]
