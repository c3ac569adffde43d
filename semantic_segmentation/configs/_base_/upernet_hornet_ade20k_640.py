# ADE20K at 640x640: 2 images per GPU (8 GPUs = batch 16), slide inference with the training
# crop and a stride of 2/3 crop, multi-scale + flip test pipeline for test.py --aug-test.
_base_ = ['./upernet_hornet.py', 'mmseg::_base_/datasets/ade20k_640x640.py']

crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(size=crop_size),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)),
)
train_dataloader = dict(batch_size=2)

# Multi-scale + flip test: the single-scale test size (2560x640) times each ratio, each scale
# also flipped; SegTTAModel averages the softmax of all 12 predictions.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=(int(2560 * r), int(640 * r)), keep_ratio=True) for r in img_ratios],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ]),
]
