# UperNet with a HorNet backbone: model, optimizer and 160k-iteration schedule shared by every
# ADE20K config. Crop-size dependent settings live in upernet_hornet_ade20k_{512,640}.py.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
# Registers type='HorNet', the layer-decay optimizer constructor and HorFPNHead.
# train.py / test.py / get_flops.py put the repository root on sys.path.
custom_imports = dict(imports=['semantic_segmentation.mmseg_custom'], allow_failed_imports=False)

num_classes = 150
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='HorNet',
        arch='tiny_7x7',  # set per config: {tiny,small,base,large}_{7x7,gf}
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4),  # per config, also init_cfg: the ImageNet classification checkpoint
    decode_head=dict(
        in_channels=[64, 128, 256, 512],
        channels=512,
        num_classes=num_classes),
    # auxiliary FCN head on stage 3 (stride 16)
    auxiliary_head=dict(
        in_channels=256,
        in_index=2,
        num_classes=num_classes),
)

# AdamW with stage-wise lr decay over 6 groups, gradient clipping at 1
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=1.0, norm_type=2),
    constructor='HorNetLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6),
)

# 1500 iterations of linear warmup, then poly (power 1) decay to 0 at 160k
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=16000, max_keep_ckpts=2))
