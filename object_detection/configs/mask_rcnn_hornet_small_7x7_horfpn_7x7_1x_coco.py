# Mask R-CNN 1x, HorNet-S (7x7) with HorFPN-7x7: FPN output convs replaced by order-2 gnConv
# with a depthwise 7x7 mixer.
_base_ = ['./_base_/mask_rcnn_hornet_small_7x7_1x.py']

model = dict(neck=dict(type='HorFPN', mixer='dwconv', kernel_size=7, order=2))
