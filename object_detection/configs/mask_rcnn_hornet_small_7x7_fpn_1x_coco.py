# Mask R-CNN 1x, HorNet-S (7x7) with the standard FPN neck (baseline for HorFPN).
_base_ = ['./_base_/mask_rcnn_hornet_small_7x7_1x.py']
