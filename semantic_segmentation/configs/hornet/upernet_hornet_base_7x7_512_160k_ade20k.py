# UperNet + HorNet-B (7x7), ImageNet-1K pre-trained, ADE20K 512x512, 160k iterations.
_base_ = ['../_base_/upernet_hornet_ade20k_512.py']

model = dict(
    backbone=dict(
        arch='base_7x7',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/hornet_base_7x7.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512),
)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.9))
