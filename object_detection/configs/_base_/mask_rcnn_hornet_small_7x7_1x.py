# Mask R-CNN 1x (12 epochs, lr steps at 8 and 11) with HorNet-S (7x7), AdamW + layer-wise lr decay,
# the same multi-scale + crop training (det-MS) as the Cascade 3x configs. The three configs that
# inherit this differ only in the neck: FPN, HorFPN-7x7, HorFPN-GF.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    './coco_instance_det_ms.py',
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

# layer_wise decay with num_layers 6, as the original: the id rule's fixed ids (11 for the last
# stage-2 blocks, 12 for the last stage) lie above the top id 7, so those groups train with lr
# scales above 1 (up to 0.95**-5); see models.layer_id.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='HorNetLayerDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=6))

# 500-iteration linear warmup as mmcv's (see cascade_mask_rcnn_hornet_fpn_3x.py), steps at epochs 8, 11
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=501),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]

auto_scale_lr = dict(enable=False, base_batch_size=16)
