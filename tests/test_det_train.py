"""object_detection/train.py and test.py end to end on a tiny generated COCO-format dataset."""
import json
import math
import os
import os.path as osp

import mmdet  # noqa: F401  (must be installed: tools/install_openmmlab.sh)
import numpy as np
import pycocotools  # noqa: F401
import pytest
import timm
import torch
from mmdet.datasets import CocoDataset
from PIL import Image

from helpers import ROOT, run_python, subprocess_env

CONFIG_DIR = osp.join(ROOT, 'object_detection', 'configs')


def make_coco(root: str, num_images: int = 4, seed: int = 0) -> str:
    """Write ``num_images`` 64-128 px images with 1-2 coloured rectangles each (boxes and polygon
    masks, COCO categories 'person'/'bicycle') to ``root``; returns the annotation file."""
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'images'), exist_ok=True)
    images, anns = [], []
    for i in range(num_images):
        w, h = int(rng.integers(96, 129)), int(rng.integers(64, 97))
        img = np.full((h, w, 3), 40, np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            bw, bh = int(rng.integers(20, w // 2)), int(rng.integers(20, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            cat = int(rng.integers(1, 3))
            img[y:y + bh, x:x + bw] = (200, 60, 60) if cat == 1 else (60, 60, 200)
            poly = [x, y, x + bw, y, x + bw, y + bh, x, y + bh]
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=cat, bbox=[x, y, bw, bh],
                             area=bw * bh, segmentation=[poly], iscrowd=0))
        name = f'{i:03d}.jpg'
        Image.fromarray(img).save(osp.join(root, 'images', name))
        images.append(dict(id=i + 1, file_name=name, width=w, height=h))
    ann_file = osp.join(root, 'instances.json')
    with open(ann_file, 'w') as f:
        # all 80 COCO categories (ids 1..80), so label -> category id maps as on real COCO
        json.dump(dict(images=images, annotations=anns,
                       categories=[dict(id=i + 1, name=n) for i, n in enumerate(CocoDataset.METAINFO['classes'])]), f)
    return ann_file


def write_test_config(path: str, base: str, data_root: str, ann_file: str, pretrained: str) -> str:
    """A config inheriting ``base`` with a small HorNet, 128 px inputs, 2 iterations and
    reduced RoI sampling (everything else — heads, losses, optimizer — comes from ``base``)."""
    text = f'''
_base_ = [{osp.join(CONFIG_DIR, base)!r}]
data_root = {data_root + '/'!r}
model = dict(
    backbone=dict(depths=(1, 1, 1, 1), base_dim=16, drop_path_rate=0.1,
                  init_cfg=dict(type='Pretrained', checkpoint={pretrained!r})),
    neck=dict(in_channels=[16, 32, 64, 128]),
    train_cfg=dict(rpn_proposal=dict(nms_pre=100, max_per_img=16)),
    test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=16), rcnn=dict(score_thr=0.0, max_per_img=10)))
_pipe_train = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
_pipe_test = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
_data = dict(data_root=data_root, ann_file={ann_file!r}, data_prefix=dict(img='images/'))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=_pipe_train, **_data))
test_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                       dataset=dict(pipeline=_pipe_test, **_data))
test_evaluator = dict(ann_file={ann_file!r})
val_dataloader = None
val_evaluator = None
val_cfg = None
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2, val_interval=100)
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0, deterministic=False)
'''
    with open(path, 'w') as f:
        f.write(text)
    return path


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('coco'))
    ann_file = make_coco(root)
    ckpts = {}
    for kind in ('gf', '7x7'):
        cls = timm.create_model(f'hornet_tiny_{kind}', depths=(1, 1, 1, 1), base_dim=16, num_classes=10)
        ckpts[kind] = osp.join(root, f'hornet_{kind}_cls.pth')
        torch.save({'model': cls.state_dict()}, ckpts[kind])  # released classification-checkpoint layout
    return root, ann_file, ckpts


def _run(args, cwd):
    proc = run_python(args, cwd=cwd, env=subprocess_env(OMP_NUM_THREADS='2', PYTHONWARNINGS='ignore'))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


def _losses(work_dir):
    runs = sorted(d for d in os.listdir(work_dir) if osp.isdir(osp.join(work_dir, d)))
    with open(osp.join(work_dir, runs[-1], 'vis_data', 'scalars.json')) as f:
        return [json.loads(line) for line in f if '"loss"' in line]


@pytest.mark.slow
@pytest.mark.parametrize('base, kind, num_loaded, roi_head_type', [
    ('cascade_mask_rcnn_hornet_tiny_gf_3x_coco.py', 'gf', 108, 'CascadeRoIHead'),
    ('mask_rcnn_hornet_small_7x7_horfpn_gf_1x_coco.py', '7x7', 100, 'StandardRoIHead'),
])
def test_train_then_test(coco, tmp_path, base, kind, num_loaded, roi_head_type):
    root, ann_file, ckpts = coco
    cfg = write_test_config(str(tmp_path / 'tiny.py'), base, root, ann_file, ckpts[kind])
    work = str(tmp_path / 'work')
    log = _run([osp.join(ROOT, 'object_detection', 'train.py'), cfg, '--work-dir', work], cwd=str(tmp_path))
    # the backbone was initialised from the classification checkpoint (GF filters kept their size)
    assert f'HorNet backbone: loaded {num_loaded} tensors' in log
    assert 'GF filters resized: none' in log
    assert roi_head_type in open(osp.join(work, 'tiny.py')).read()
    records = _losses(work)
    assert [r['iter'] for r in records] == [1, 2]
    for r in records:
        assert math.isfinite(r['loss']) and r['loss'] > 0
        assert all(math.isfinite(v) for k, v in r.items() if k.startswith('loss'))
    ckpt_out = osp.join(work, 'iter_2.pth')
    assert osp.isfile(ckpt_out)
    state = torch.load(ckpt_out, map_location='cpu', weights_only=False)['state_dict']
    assert 'backbone.norm0.weight' in state
    gf_key = 'backbone.stages.3.0.gnconv.dwconv.complex_weight' if kind == 'gf' \
        else 'neck.fpn_convs.0.gnconv.dwconv.complex_weight'  # HorFPN-GF's 32x17 filter
    assert tuple(state[gf_key].shape[1:3]) == ((7, 4) if kind == 'gf' else (32, 17))

    metrics_file = str(tmp_path / 'metrics.json')
    _run([osp.join(ROOT, 'object_detection', 'test.py'), cfg, ckpt_out, '--work-dir', work,
          '--metrics-out', metrics_file], cwd=str(tmp_path))
    with open(metrics_file) as f:
        metrics = json.load(f)
    print(base, 'losses', [round(r['loss'], 3) for r in records],
          'bbox_mAP', metrics['coco/bbox_mAP'], 'segm_mAP', metrics['coco/segm_mAP'])
    for kind in ('bbox', 'segm'):
        for key in ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l'):
            v = metrics[f'coco/{kind}_{key}']
            assert v == -1.0 or 0.0 <= v <= 1.0  # -1: no object of that size in the tiny set
        assert 0.0 <= metrics[f'coco/{kind}_mAP'] <= 1.0
