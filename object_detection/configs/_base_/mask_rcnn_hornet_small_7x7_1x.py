# Mask R-CNN 1x (12 epochs) with HorNet-S (7x7), AdamW + layer-wise lr decay. The three configs
# that inherit this differ only in the neck: FPN, HorFPN-7x7, HorFPN-GF.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['models.mm_hornet', 'object_detection.horfpn'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='HorNet',
        arch='small_7x7',
        drop_path_rate=0.6,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/hornet_small_7x7.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='HorNetLayerDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=12))

auto_scale_lr = dict(enable=False, base_batch_size=16)
