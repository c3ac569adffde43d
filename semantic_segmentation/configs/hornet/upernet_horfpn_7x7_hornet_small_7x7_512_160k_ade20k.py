# UperNet with the HorFPN-7x7 head (FPN fusion layer `fpn_bottleneck` = order-2 gnConv, depthwise 7x7 mixer)
# on HorNet-S (7x7), ImageNet-1K pre-trained, ADE20K 512x512, 160k iterations.
_base_ = ['./upernet_hornet_small_7x7_512_160k_ade20k.py']

model = dict(
    backbone=dict(drop_path_rate=0.3),
    decode_head=dict(type='HorFPNHead', gnconv_mixer='dwconv', gnconv_kernel_size=7),
)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.9))
