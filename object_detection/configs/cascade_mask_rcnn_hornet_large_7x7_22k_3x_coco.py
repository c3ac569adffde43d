# Cascade Mask R-CNN 3x, HorNet-L (7x7) (ImageNet-22K pre-training).
_base_ = ['./_base_/cascade_mask_rcnn_hornet_fpn_3x.py']

model = dict(
    backbone=dict(
        arch='large_7x7',
        drop_path_rate=0.7,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/hornet_large_7x7_in22k.pth')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
optim_wrapper = dict(optimizer=dict(lr=1e-4), paramwise_cfg=dict(decay_rate=0.7))
