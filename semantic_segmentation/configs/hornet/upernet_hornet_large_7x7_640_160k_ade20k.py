# UperNet + HorNet-L (7x7), ImageNet-22K pre-trained, ADE20K 640x640, 160k iterations.
_base_ = ['../_base_/upernet_hornet_ade20k_640.py']

model = dict(
    backbone=dict(
        arch='large_7x7',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/hornet_large_7x7.pth')),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768),
)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8))
