# UperNet + HorNet-L (GF), ImageNet-22K pre-trained, ADE20K 640x640, 160k iterations.
_base_ = ['../_base_/upernet_hornet_ade20k_640.py']

model = dict(
    backbone=dict(
        arch='large_gf',
        gf_sizes=[None, None, (24, 13), (12, 7)],  # GF filters for the dense-prediction inputs
        drop_path_rate=0.4,
        with_cp=True,  # gradient checkpointing of the backbone blocks, as the original
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/hornet_large_gf.pth')),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768),
)
optim_wrapper = dict(clip_grad=dict(max_norm=0.1, norm_type=2), paramwise_cfg=dict(decay_rate=0.8))
