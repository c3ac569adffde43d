# UperNet + HorNet-S (7x7), ImageNet-1K pre-trained, ADE20K 512x512, 160k iterations.
_base_ = ['../_base_/upernet_hornet_ade20k_512.py']

model = dict(
    backbone=dict(
        arch='small_7x7',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/hornet_small_7x7.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384),
)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.9))
