# UperNet with the HorFPN-GF head (FPN fusion layer `fpn_bottleneck` = order-2 gnConv, GlobalLocalFilter mixer)
# on HorNet-S (7x7), ImageNet-1K pre-trained, ADE20K 512x512, 160k iterations.
_base_ = ['./upernet_hornet_small_7x7_512_160k_ade20k.py']

model = dict(
    backbone=dict(drop_path_rate=0.3),
    decode_head=dict(type='HorFPNHead', gnconv_mixer='gf', gnconv_filter_size=(32, 17)),
)
optim_wrapper = dict(clip_grad=dict(max_norm=0.1, norm_type=2), paramwise_cfg=dict(decay_rate=0.9))
