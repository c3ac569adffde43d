"""calc_flops.py's FFT term: a hand count for GF layers of HorNet-T, and why it is read as it is.

The published table itself (3.98 / 3.91 / 8.83 / 8.73 / 15.58 / 15.46 / 34.82 / 34.64 GFLOPs at 224,
101.81 for large GF 384) is checked by tests/test_models.py::test_flops_reproduce_model_zoo_table, and the
small-model conv/linear/LayerNorm terms by tests/test_models.py::test_flops_formula_small_model.
"""
import math

import pytest
import timm
import torch

import calc_flops
from models import GlobalLocalFilter

# HorNet-T GF at 224, stage 3: 224 / 16 = 14x14 map, width 256, gnConv order 4, so its mixer sees
# 32 + 64 + 128 + 256 = 480 channels; GlobalLocalFilter sends half of them, C = 240, through the FFT.
# rfft2 input  (1, 240, 14, 14): 240 * 14 * 14 * ceil(log2(240 * 14 = 3360) = 11.71) = 47040 * 12 = 564480
# irfft2 input (1, 240, 14, 8):  240 * 14 *  8 * 12 (half spectrum: 14 // 2 + 1 = 8)   = 26880 * 12 = 322560
STAGE3_RFFT2, STAGE3_IRFFT2 = 564480, 322560
# Stage 4: 7x7 map, width 512, order 5: 32 + ... + 512 = 992 channels, C = 496 through the FFT.
# rfft2  (1, 496, 7, 7): 496 * 7 * 7 * ceil(log2(496 * 7 = 3472) = 11.76) = 24304 * 12 = 291648
# irfft2 (1, 496, 7, 4): 496 * 7 * 4 * 12                                 = 13888 * 12 = 166656
STAGE4_RFFT2, STAGE4_IRFFT2 = 291648, 166656


def test_fft_flops_formula():
    assert calc_flops.fft_flops((1, 240, 14, 14)) == 240 * 14 * 14 * 12 == STAGE3_RFFT2
    assert calc_flops.fft_flops((1, 240, 14, 8)) == 240 * 14 * 8 * 12 == STAGE3_IRFFT2
    assert calc_flops.fft_flops((1, 496, 7, 7)) == STAGE4_RFFT2
    assert calc_flops.fft_flops((1, 496, 7, 4)) == STAGE4_IRFFT2
    # the logarithm is of C*H, not of the transform size H*W (log2(196) -> 8): see calc_flops' docstring
    assert math.ceil(math.log2(240 * 14)) == 12 and math.ceil(math.log2(14 * 14)) == 8


@pytest.fixture(scope='module')
def tiny_gf():
    with torch.device('meta'):  # the real HorNet-T GF, no weights allocated
        return timm.create_model('hornet_tiny_gf').eval()


def test_one_gf_layer_against_hand_count(tiny_gf):
    layer = tiny_gf.stages[2][0].gnconv.dwconv
    assert isinstance(layer, GlobalLocalFilter)
    assert layer.dw.in_channels == 240 and tuple(layer.complex_weight.shape) == (240, 14, 8, 2)
    f = calc_flops.count_flops(layer, (14, 14), in_chans=480)
    assert f['fft'] == STAGE3_RFFT2 + STAGE3_IRFFT2 == 887040
    assert f['conv_linear'] == 240 * 14 * 14 * 3 * 3  # the local half: depthwise 3x3, no bias
    assert f['layernorm'] == 0  # channels-first LayerNorms are not counted (published convention)


def test_whole_model_fft_against_hand_count(tiny_gf):
    """HorNet-T GF at 224: 18 GF blocks in stage 3, 2 in stage 4; stages 1-2 have no FFT."""
    assert tiny_gf.depths == (2, 3, 18, 2)
    f = calc_flops.count_flops(tiny_gf, (224, 224))
    assert f['fft'] == 18 * (STAGE3_RFFT2 + STAGE3_IRFFT2) + 2 * (STAGE4_RFFT2 + STAGE4_IRFFT2) == 16883328


@pytest.mark.slow
def test_only_the_published_reading_reproduces_the_table(monkeypatch):
    """Counting the FFT as the architecture notes word it with true NCHW dims, H*W*C*ceil(log2(H*W)),
    misses the published 8.73 GFLOPs of HorNet-S GF (8.72); the published counter's reading gives it."""
    assert round(calc_flops.analyse('hornet_small_gf')['gflops'], 2) == 8.73

    def transform_size_log(input_shape):
        c, h, w = input_shape[-3:]
        return h * w * c * math.ceil(math.log2(h * w))

    monkeypatch.setattr(calc_flops, 'fft_flops', transform_size_log)
    assert round(calc_flops.analyse('hornet_small_gf')['gflops'], 2) == 8.72
