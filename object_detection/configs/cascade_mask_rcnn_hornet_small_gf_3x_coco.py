# Cascade Mask R-CNN 3x, HorNet-S (GF, filters 14x8 / 7x4) (ImageNet-1K).
_base_ = ['./_base_/cascade_mask_rcnn_hornet_fpn_3x.py']

model = dict(
    backbone=dict(
        arch='small_gf',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/hornet_small_gf.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(optimizer=dict(lr=2e-4), paramwise_cfg=dict(decay_rate=0.7))
