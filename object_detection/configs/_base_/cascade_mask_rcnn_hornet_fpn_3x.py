# Cascade Mask R-CNN with a HorNet backbone, 3x schedule (36 epochs), multi-scale + crop training
# (det-MS, ./coco_instance_det_ms.py).
# Per-size configs set the backbone variant, drop path, FPN input widths, lr and layer decay.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    './coco_instance_det_ms.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['models.mm_hornet', 'object_detection.horfpn'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='HorNet',
        arch='tiny_7x7',
        drop_path_rate=0.4,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/hornet_tiny_7x7.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]),
    # the three cascade stages differ only in their box-delta normalisation
    roi_head=dict(bbox_head=[
        dict(
            type='ConvFCBBoxHead',
            num_shared_convs=4,
            num_shared_fcs=1,
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
            reg_class_agnostic=False,
            reg_decoded_bbox=True,
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
    ]))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
# lr(i) = base * (0.001 + 0.999 * i / 500) for iterations i < 500 (mmcv's linear warmup), times 0.1
# from epoch 27 and 0.01 from epoch 33. mmengine spreads LinearLR over end - begin - 1 steps, so
# end=501 gives mmcv's 500-iteration warmup exactly.
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=501),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]

# AdamW with layer-wise lr decay over the backbone's 12 layers (+ stem and head groups)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='HorNetLayerDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=12))

# total batch 16 (8 GPUs x 2 images), as in the published runs
auto_scale_lr = dict(enable=False, base_batch_size=16)
