# Cascade Mask R-CNN 3x, HorNet-B (7x7) (ImageNet-1K).
_base_ = ['./_base_/cascade_mask_rcnn_hornet_fpn_3x.py']

model = dict(
    backbone=dict(
        arch='base_7x7',
        drop_path_rate=0.7,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/hornet_base_7x7.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(optimizer=dict(lr=2e-4), paramwise_cfg=dict(decay_rate=0.8))
