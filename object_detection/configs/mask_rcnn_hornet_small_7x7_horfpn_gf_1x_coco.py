# Mask R-CNN 1x, HorNet-S (7x7) with HorFPN-GF: FPN output convs replaced by order-2 gnConv
# with a global-local filter mixer (frequency filter 32x17, resized per pyramid level).
_base_ = ['./_base_/mask_rcnn_hornet_small_7x7_1x.py']

model = dict(neck=dict(type='HorFPN', mixer='gf', filter_size=(32, 17), order=2))
