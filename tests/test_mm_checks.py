"""The OpenMMLab entry points check what mmengine, mmdet and mmseg do not: weights that fit nothing,
categories the config does not name, segmentation labels outside the classes, broken data files,
launchers without their environment. Each is one line on stderr and exit 2 (never exit 0 with a
wrong result, never a traceback); generated inputs check the rules themselves."""
import contextlib
import io
import json
import os
import os.path as osp
import shutil

import mmdet  # noqa: F401  (a missing OpenMMLab stack must fail, not skip)
import mmseg  # noqa: F401
import numpy as np
import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmdet.datasets import CocoDataset
from PIL import Image

from helpers import SMALL
from test_det_train import make_coco, write_test_config
from test_seg_train import make_tiny_ade20k, tiny_config
from tools import mm_runner

FIXTURES_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def call(script, argv):
    """``<script>.main(argv)`` in-process: (exit status, stdout, stderr); an escaping exception fails."""
    import importlib
    main = importlib.import_module(script).main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def assert_error(rc, err, message):
    """Exit 2 and exactly one line on stderr, ``error: ...`` holding ``message``; no traceback."""
    assert rc == 2, err[-3000:]
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], err[-3000:]


@pytest.fixture(scope='module')
def det(tmp_path_factory):
    """Tiny COCO data (4 images), a 2-iteration Mask R-CNN config and a classification checkpoint."""
    root = tmp_path_factory.mktemp('mmdet')
    ann = make_coco(str(root / 'coco'))
    cls_ckpt = str(root / 'cls.pth')
    torch.save({'model': timm.create_model('hornet_tiny_7x7', **SMALL).state_dict()}, cls_ckpt)
    cfg = write_test_config(str(root / 'tiny_det.py'), 'mask_rcnn_hornet_small_7x7_horfpn_gf_1x_coco.py',
                            str(root / 'coco'), ann, cls_ckpt)
    return dict(root=str(root), ann=ann, cfg=cfg, cls=cls_ckpt)


@pytest.fixture(scope='module')
def seg(tmp_path_factory):
    """Tiny ADE20K data, a small UperNet config and a checkpoint of exactly that model."""
    root = tmp_path_factory.mktemp('mmseg')
    make_tiny_ade20k(str(root / 'ade'))
    cfg = tiny_config(str(root / 'tiny_seg.py'), 'upernet_hornet_tiny_gf_512_160k_ade20k.py', str(root / 'ade'))
    from semantic_segmentation.train import build_config, parse_args
    runner = mm_runner.build_runner(build_config(parse_args([cfg, '--work-dir', str(root / 'w0')])),
                                    parse_args([cfg]))
    ckpt = str(root / 'seg.pth')
    torch.save({'meta': {}, 'state_dict': runner.model.state_dict()}, ckpt)
    return dict(root=str(root), cfg=cfg, ckpt=ckpt, data=str(root / 'ade'))


def _det_train(det, work, *extra):
    return call('object_detection.train', [det['cfg'], '--work-dir', work, *extra])


# ----------------------------------------------------------------------------- checkpoints

def test_load_from_classification_checkpoint(det, tmp_path):
    """--load-from a file none of whose weights fits (a classification checkpoint) trained from
    scratch with exit 0; now it says where such a file belongs."""
    rc, out, err = _det_train(det, str(tmp_path / 'w'), '--load-from', det['cls'])
    assert_error(rc, err, f'--load-from {det["cls"]}: none of its 1 weights fits the model (its keys: model; ')
    assert err.strip().endswith('pass it as --cfg-options model.backbone.init_cfg.checkpoint=FILE')


def test_resume_classification_checkpoint(det, tmp_path):
    """--resume of a classification checkpoint: one line (was KeyError: 'meta')."""
    rc, out, err = _det_train(det, str(tmp_path / 'w'), '--resume', det['cls'])
    assert_error(rc, err, f'--resume {det["cls"]} is not a checkpoint of a training run of this script (it has '
                          'no meta, message_hub, state_dict)')


def test_any_key_check_accepts_a_partial_fit():
    """Weights of which some fit (a detector checkpoint of another head size) still load: only a
    file that fits nothing is refused."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 4))
    partial = {'state_dict': {'module.0.weight': torch.zeros(3, 2), '1.weight': torch.zeros(9, 9)}}
    mm_runner._check_any_key_fits(model, partial, 'p.pth', [(r'^module.', '')])
    with pytest.raises(mm_runner.CheckpointLoadError, match='none of its 2 weights fits the model'):
        mm_runner._check_any_key_fits(model, {'a': torch.zeros(1), 'b': torch.zeros(1)}, 'c.pth', [])


# ----------------------------------------------------------------------------- categories

POOL = ['person', 'bicycle', 'car', 'cat', 'dog', 'tumour', 'cell', 'Person', 'bicycle ']


def _coco_with(root, names, used):
    """A copy of the tiny COCO annotation with categories ``names`` (ids 1..n) and its instances
    moved onto the category ids in ``used`` (round robin)."""
    with open(osp.join(root, 'instances.json')) as f:
        coco = json.load(f)
    coco['categories'] = [dict(id=i + 1, name=n) for i, n in enumerate(names)]
    for k, ann in enumerate(coco['annotations']):
        ann['category_id'] = used[k % len(used)]
    return coco


@pytest.mark.slow
@given(names=st.lists(st.sampled_from(POOL), min_size=1, max_size=5, unique=True), data=st.data())
@settings(max_examples=25, suppress_health_check=FIXTURES_OK)
def test_categories_outside_the_classes_are_an_error(det, tmp_path_factory, names, data):
    """Whatever category names an annotation file has: the data set loads when every category with
    instances is a config class, and otherwise is a DataError naming exactly those categories
    (mmdet dropped their instances silently)."""
    used = data.draw(st.lists(st.integers(1, len(names)), min_size=1, max_size=3, unique=True))
    classes = ('person', 'bicycle', 'car')
    folder = tmp_path_factory.mktemp('cats')
    ann = str(folder / 'ann.json')
    with open(ann, 'w') as f:
        json.dump(_coco_with(osp.dirname(det['ann']), names, used), f)
    ds = CocoDataset(ann_file=ann, data_root=osp.dirname(det['ann']), data_prefix=dict(img='images/'),
                     metainfo=dict(classes=classes), pipeline=[], filter_cfg=None)
    unknown = [names[i - 1] for i in sorted(used) if names[i - 1] not in classes]
    if not unknown:
        mm_runner.check_categories(ds)
        kept = sum(len(ds.get_data_info(i)['instances']) for i in range(len(ds)))
        assert kept == len(_coco_with(osp.dirname(det['ann']), names, used)['annotations'])  # none dropped
        return
    with pytest.raises(mm_runner.DataError) as e:
        mm_runner.check_categories(ds)
    msg = str(e.value)
    assert f'the annotations of the categories {", ".join(map(repr, unknown))} would be dropped' in msg
    assert "not among the config's 3 classes" in msg and '\n' not in msg


def test_train_with_foreign_categories(det, tmp_path):
    """object_detection/train.py on a file whose categories are not the config's: one line naming
    them (the instances were dropped and training went on)."""
    coco = _coco_with(osp.dirname(det['ann']), ['tumour', 'cell'], [1, 2])
    ann = str(tmp_path / 'ann.json')
    with open(ann, 'w') as f:
        json.dump(coco, f)
    rc, out, err = _det_train(det, str(tmp_path / 'w'), '--cfg-options', f'train_dataloader.dataset.ann_file={ann}')
    assert_error(rc, err, f"{ann}: the annotations of the categories 'tumour', 'cell' would be dropped: they are not "
                          "among the config's 80 classes")


# ----------------------------------------------------------------------------- data files

def test_missing_annotation_file(det, tmp_path):
    missing = str(tmp_path / 'nope.json')
    rc, out, err = _det_train(det, str(tmp_path / 'w'), '--cfg-options', f'train_dataloader.dataset.ann_file={missing}')
    assert_error(rc, err, f'cannot build the data set: {missing}: no such file; check data_root and ann_file')


@pytest.mark.slow
@given(keep=st.floats(0.0, 0.99))
@settings(max_examples=4, suppress_health_check=FIXTURES_OK)
def test_truncated_annotation_json(det, tmp_path_factory, keep):
    """An annotation file cut anywhere: one line naming it (was a JSONDecodeError traceback)."""
    folder = tmp_path_factory.mktemp('cut')
    raw = open(det['ann'], 'rb').read()
    ann = str(folder / 'ann.json')
    with open(ann, 'wb') as f:
        f.write(raw[:int(len(raw) * keep)])
    rc, out, err = _det_train(det, str(folder / 'w'), '--cfg-options', f'train_dataloader.dataset.ann_file={ann}')
    assert_error(rc, err, f'cannot build the data set: its annotation file {ann} is not valid JSON (')


def test_missing_image(det, tmp_path):
    """An image the annotation names but the folder lacks: one line naming it (was a traceback)."""
    data = str(tmp_path / 'coco')
    shutil.copytree(osp.dirname(det['ann']), data)
    os.remove(osp.join(data, 'images', '000.jpg'))
    rc, out, err = _det_train(det, str(tmp_path / 'w'), '--cfg-options', f'train_dataloader.dataset.data_root={data}',
                              f'train_dataloader.dataset.ann_file={data}/instances.json')
    assert_error(rc, err, f"No such file or directory: '{data}/images/000.jpg'")


def test_work_dir_that_is_a_file(det, tmp_path):
    (tmp_path / 'afile').write_text('notes')
    for work in (str(tmp_path / 'afile'), str(tmp_path / 'afile' / 'sub')):
        rc, out, err = _det_train(det, work)
        assert_error(rc, err, f'--work-dir {work}: {tmp_path}/afile is a file, not a folder')
    assert (tmp_path / 'afile').read_text() == 'notes'


@pytest.mark.parametrize('script', ['object_detection.train', 'object_detection.test', 'semantic_segmentation.train',
                                    'semantic_segmentation.test'])
def test_launcher_pytorch_outside_torchrun(script, det, seg, tmp_path, monkeypatch):
    for k in mm_runner.LAUNCHER_VARS['pytorch']:
        monkeypatch.delenv(k, raising=False)
    s = det if script.startswith('object') else seg
    argv = [s['cfg']] + ([s.get('ckpt', det['cls'])] if script.endswith('test') else [])
    rc, out, err = call(script, argv + ['--work-dir', str(tmp_path / 'w'), '--launcher', 'pytorch'])
    assert_error(rc, err, '--launcher pytorch needs the variables its launcher sets (RANK, WORLD_SIZE, ')
    assert 'start it with dist_train.sh / dist_test.sh (torchrun), or leave --launcher out' in err


# ----------------------------------------------------------------------------- segmentation labels

@given(n=st.integers(1, 200), ignore=st.sampled_from([255, 0, -1]),
       values=st.lists(st.integers(0, 255), min_size=1, max_size=6))
@settings(max_examples=60)
def test_seg_label_check_passes_exactly_the_classes(n, ignore, values):
    """A label map passes when every value is a class (0..n-1) or the ignore index; otherwise the
    error lists exactly the other values."""
    seg = np.array(values, np.uint8).reshape(1, -1)
    check = mm_runner.SegLabelCheck(n, ignore)
    bad = sorted({v for v in values if v >= n and v != ignore})
    if not bad:
        assert check({'gt_seg_map': seg}) == {'gt_seg_map': seg}
        return
    with pytest.raises(mm_runner.DataError) as e:
        check({'gt_seg_map': seg, 'seg_map_path': 'x.png', 'reduce_zero_label': True})
    assert f'x.png: label values {", ".join(map(str, bad[:8]))} lie outside the {n} classes' in str(e.value)


def _bad_labels(seg, tmp_path):
    """A copy of the tiny ADE20K whose first training and validation label maps hold the value 200
    (class 199 after reduce_zero_label: ADE20K has 150)."""
    data = str(tmp_path / 'ade')
    shutil.copytree(seg['data'], data)
    for split in ('training', 'validation'):
        folder = osp.join(data, 'annotations', split)
        path = osp.join(folder, sorted(os.listdir(folder))[0])
        label = np.array(Image.open(path))
        label[5:9, 5:9] = 200
        Image.fromarray(label).save(path)
    return data


def test_seg_labels_outside_the_classes_train_and_test(seg, tmp_path):
    """Training stopped with IndexError and testing counted the values as wrong predictions (a lower
    mIoU, exit 0); both now end with one line naming the file and the values."""
    data = _bad_labels(seg, tmp_path)
    opts = [f'train_dataloader.dataset.data_root={data}', f'val_dataloader.dataset.data_root={data}',
            f'test_dataloader.dataset.data_root={data}']
    rc, out, err = call('semantic_segmentation.train', [seg['cfg'], '--work-dir', str(tmp_path / 'w'),
                                                        '--cfg-options', *opts, 'train_cfg.max_iters=2'])
    assert_error(rc, err, 'label values 199 lie outside the 150 classes (0..149, after reduce_zero_label=True) '
                          'and are not the ignore index 255')
    assert 'annotations/training/' in err
    rc, out, err = call('semantic_segmentation.test', [seg['cfg'], seg['ckpt'], '--work-dir', str(tmp_path / 'w'),
                                                       '--cfg-options', *opts])
    assert_error(rc, err, 'label values 199 lie outside the 150 classes')
    assert 'annotations/validation/' in err


ADE20K_CONFIG = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'semantic_segmentation', 'configs',
                         'hornet', 'upernet_hornet_tiny_gf_512_160k_ade20k.py')


def _with_released_tta(seg, path: str) -> str:
    """The tiny config with the ``tta_pipeline`` of a released ADE20K config (6 scales x 2 flips,
    ``LoadAnnotations`` nested in ``TestTimeAug``) instead of its own small one."""
    from mmengine.config import Config
    cfg = Config.fromfile(seg['cfg'])
    cfg.tta_pipeline = Config.fromfile(ADE20K_CONFIG).tta_pipeline
    cfg.dump(path)
    return path


def test_seg_labels_outside_the_classes_aug_test(seg, tmp_path):
    """``test.py --aug-test`` (the released config's test-time augmentation, whose ``LoadAnnotations``
    sits inside ``TestTimeAug``) stops on a label outside the classes with the same one line as the
    single-scale test, instead of scoring it as a wrong prediction."""
    cfg = _with_released_tta(seg, str(tmp_path / 'tta.py'))
    data = _bad_labels(seg, tmp_path)
    rc, out, err = call('semantic_segmentation.test', [cfg, seg['ckpt'], '--work-dir', str(tmp_path / 'w'),
                                                       '--aug-test', '--cfg-options',
                                                       f'test_dataloader.dataset.data_root={data}'])
    assert_error(rc, err, 'label values 199 lie outside the 150 classes (0..149, after reduce_zero_label=True) '
                          'and are not the ignore index 255')
    assert 'annotations/validation/' in err


def test_released_tta_pipeline_checks_every_augmented_copy(seg, tmp_path):
    """The ``--aug-test`` data set of the released config: each of its 12 augmented copies checks the
    labels right after loading them; good labels pass, a bad value in a label map stops."""
    from semantic_segmentation.test import build_config, parse_args
    cfg = build_config(parse_args([_with_released_tta(seg, str(tmp_path / 'tta.py')), seg['ckpt'], '--aug-test',
                                   '--work-dir', str(tmp_path / 'w')]))
    runner = mm_runner.build_runner(cfg, parse_args([seg['cfg'], seg['ckpt']]))
    ds = runner.test_dataloader.dataset
    mm_runner.DataChecks().before_run(runner)
    tta = ds.pipeline.transforms[-1]
    assert type(tta).__name__ == 'TestTimeAug' and len(tta.subroutines) == 12
    for sub in tta.subroutines:
        names = [type(t).__name__ for t in sub.transforms]
        assert names[names.index('LoadAnnotations') + 1] == 'SegLabelCheck' and names.count('SegLabelCheck') == 1
    mm_runner.DataChecks().before_run(runner)  # a second run adds nothing
    assert all([type(t).__name__ for t in sub.transforms].count('SegLabelCheck') == 1 for sub in tta.subroutines)
    for i in range(len(ds)):
        assert len(ds[i]['data_samples']) == 12  # good labels: every copy packed
    path = osp.join(seg['data'], 'annotations', 'validation', sorted(os.listdir(
        osp.join(seg['data'], 'annotations', 'validation')))[1])
    bad = str(tmp_path / 'bad.png')
    label = np.array(Image.open(path))
    label[0, 0] = 152  # class 151 after reduce_zero_label
    Image.fromarray(label).save(bad)
    with pytest.raises(mm_runner.DataError, match='label values 151 lie outside the 150 classes'):
        ds.pipeline(dict(ds.get_data_info(1), seg_map_path=bad))


def _pipeline_shapes():
    """Pipeline configs of any shape: steps and wrappers (``RandomChoice``, ``RandomApply``) nested in
    each other, ``LoadAnnotations`` anywhere, and possibly last a ``TestTimeAug`` (list of lists of such
    steps; mmcv needs it last, as its output holds lists)."""
    leaf = st.sampled_from([dict(type='LoadAnnotations'), dict(type='RandomFlip', prob=0.5, direction='horizontal')])

    def wrap(children):
        return st.one_of(
            st.lists(st.lists(children, min_size=1, max_size=2), min_size=1, max_size=2).map(
                lambda ls: dict(type='RandomChoice', transforms=ls)),
            st.lists(children, min_size=1, max_size=2).map(
                lambda ls: dict(type='RandomApply', transforms=ls, prob=0.5)))
    steps = st.recursive(leaf, wrap, max_leaves=5)
    tta = st.lists(st.lists(steps, min_size=1, max_size=2), min_size=1, max_size=3).map(
        lambda ls: [dict(type='TestTimeAug', transforms=ls)])
    return st.tuples(st.lists(steps, max_size=2), st.one_of(st.just([]), tta)).map(
        lambda t: t[0] + t[1]).filter(bool)


def _label_maps(out) -> int:
    """How many label maps a pipeline's output holds (TestTimeAug packs a list of results)."""
    if isinstance(out, dict):
        return sum(_label_maps(v) if k != 'gt_seg_map' else 1 for k, v in out.items())
    if isinstance(out, list):
        return sum(_label_maps(v) for v in out)
    return 0


@given(shape=_pipeline_shapes(), label=st.sampled_from([0, 1, 150, 151, 200, 255]), seed=st.integers(0, 100))
@settings(max_examples=40, suppress_health_check=[*FIXTURES_OK, HealthCheck.filter_too_much])
def test_no_bad_label_map_leaves_a_pipeline_of_any_shape(shape, label, seed, tmp_path_factory):
    """Whatever the nesting of a pipeline that runs, once the checks are inserted a label map with a
    value outside the 150 classes (after reduce_zero_label) and not 255 never leaves it: the pipeline
    either stops with the one-line error or loaded no label map on that run; a good one passes."""
    import copy

    from hypothesis import assume
    from mmengine.dataset import Compose
    from mmengine.registry import DefaultScope
    folder = tmp_path_factory.mktemp('label')

    def run(value: int, checked: bool):
        path = str(folder / f'{value}.png')
        Image.fromarray(np.full((4, 4), value, np.uint8)).save(path)
        with DefaultScope.overwrite_default_scope('mmseg'):
            pipeline = Compose(copy.deepcopy(shape))  # TestTimeAug builds its config in place
        if checked:
            ds = type('SegSet', (), {'pipeline': pipeline, 'metainfo': {'classes': tuple(range(150))},
                                     'reduce_zero_label': True})()
            mm_runner.add_seg_label_check(ds, 255)
        np.random.seed(seed)  # RandomChoice / RandomApply draw from numpy: the same path both times
        return pipeline({'seg_map_path': path, 'reduce_zero_label': True, 'seg_fields': [],
                         'img': np.zeros((4, 4, 3), np.uint8)})

    try:  # mmcv rejects some shapes (a TestTimeAug whose alternatives give different keys)
        plain = run(1, checked=False)
    except Exception:  # noqa: BLE001
        assume(False)
    reduced = 255 if label in (0, 255) else label - 1  # reduce_zero_label: 0 -> 255 (ignored), v -> v - 1
    bad = reduced != 255 and reduced >= 150
    try:
        out = run(label, checked=True)
    except mm_runner.DataError as e:
        assert bad and f'label values {reduced} lie outside the 150 classes' in str(e)
        return
    assert _label_maps(out) == _label_maps(plain)
    assert not bad or _label_maps(out) == 0
