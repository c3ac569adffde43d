"""Compatibility fixes for timm's AutoAugment / RandAugment ops.

timm's posterize op passes ``bits_to_keep = 0`` to ``PIL.ImageOps.posterize`` whenever the level
maps to "keep no bit": RandAugment's ``PosterizeIncreasing`` (the ``inc1`` policies, e.g. our
default ``rand-m9-mstd0.5-inc1``) at magnitudes >= 10 (m12/m15 are clamped to 10), ``Posterize``
at magnitudes < 2.5 and AutoAugment's ``v0`` policies. Pillow up to 12 accepted 0 and returned a
black image (mask ``~(2**8 - 1)`` clears every bit); Pillow 13 raises ``ValueError: bits must be
between or equal to 1 and 8``, which kills training within minutes.

:func:`patch_timm_posterize` swaps the op in timm's public ``NAME_TO_OP`` table (read by every
``AugmentOp`` when it is built) for :func:`posterize`, which keeps the old meaning. It does nothing
when the installed timm/Pillow already accept 0 bits, so a future fix upstream takes over.
"""
from typing import Any

from PIL import Image, ImageOps
from timm.data import auto_augment

_POSTERIZE_OPS = ('Posterize', 'PosterizeIncreasing', 'PosterizeOriginal')


def posterize(img: Image.Image, bits_to_keep: Any, **__: Any) -> Image.Image:
    """Keep the ``bits_to_keep`` most significant bits of each channel, clamped to [0, 8];
    0 bits gives a black image (what Pillow < 13 returned)."""
    bits = int(min(max(bits_to_keep, 0), 8))
    if bits >= 8:
        return img
    if bits >= 1:
        return ImageOps.posterize(img, bits)
    # no bit kept: every value & 0 == 0 (a zero lookup table per band, as ImageOps does for L/RGB)
    return img.point([0] * (256 * len(img.getbands())))


def _timm_posterize_handles_zero_bits() -> bool:
    probe = Image.new('RGB', (2, 2), (200, 100, 50))
    try:
        out = auto_augment.posterize(probe, 0)
    except (ValueError, OSError):
        return False
    return out.mode == 'RGB' and out.getextrema() == ((0, 0), (0, 0), (0, 0))


def patch_timm_posterize() -> bool:
    """Make timm's posterize ops accept 0 bits (see the module docstring). Call before building the
    augmentation; idempotent. Returns True if timm's op table was patched (now or earlier)."""
    table = auto_augment.NAME_TO_OP
    if all(table.get(name) is posterize for name in _POSTERIZE_OPS if name in table):
        return True
    if _timm_posterize_handles_zero_bits():
        return False
    for name in _POSTERIZE_OPS:
        if table.get(name) is auto_augment.posterize:
            table[name] = posterize
    return True
