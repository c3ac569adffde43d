# UperNet + HorNet-T (GF), ImageNet-1K pre-trained, ADE20K 512x512, 160k iterations.
_base_ = ['../_base_/upernet_hornet_ade20k_512.py']

model = dict(
    backbone=dict(
        arch='tiny_gf',
        gf_sizes=[None, None, (24, 13), (12, 7)],  # GF filters for the dense-prediction inputs
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/hornet_tiny_gf.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256),
)
optim_wrapper = dict(clip_grad=dict(max_norm=1.0, norm_type=2), paramwise_cfg=dict(decay_rate=0.9, num_layers=6))
