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
        drop_path_rate=0.4,
        with_cp=False),  # per config, also init_cfg: the ImageNet classification checkpoint
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

# AdamW with stage-wise lr decay (num_layers 12: stage s at 0.9**(12-s), downsample layers at
# 0.9**13, heads at 1; T sets 6). No gradient clipping here: the GF configs set it (1 or 0.1).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='HorNetLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12),
)

# As the original (mmcv): lr(i) = base * (1 - i / 160000) at every iteration i = 0..159999, times
# the linear warmup factor 1e-6 + (1 - 1e-6) * i / 1500 while i < 1500. Both schedulers start at
# iteration 0 and mmengine multiplies them, so the poly factor runs over the whole run. mmengine
# spreads a scheduler over end - begin - 1 steps, hence end = 1501 / 160001 for 1500 / 160000.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1501),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=160001),
]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=16000, max_keep_ckpts=2))
