# Cascade Mask R-CNN 3x, HorNet-T (GF, filters 14x8 / 7x4) (ImageNet-1K).
_base_ = ['./_base_/cascade_mask_rcnn_hornet_fpn_3x.py']

model = dict(
    backbone=dict(
        arch='tiny_gf',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/hornet_tiny_gf.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))
optim_wrapper = dict(optimizer=dict(lr=2e-4), paramwise_cfg=dict(decay_rate=0.7))
