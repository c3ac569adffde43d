# UperNet + HorNet-T (7x7), ImageNet-1K pre-trained, ADE20K 512x512, 160k iterations.
_base_ = ['../_base_/upernet_hornet_ade20k_512.py']

model = dict(
    backbone=dict(
        arch='tiny_7x7',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/hornet_tiny_7x7.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256),
)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.9, num_layers=6))
