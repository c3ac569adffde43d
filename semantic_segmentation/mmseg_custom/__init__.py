"""Modules the segmentation configs load through ``custom_imports``.

Importing this package registers the dense HorNet backbone (``type='HorNet'``) and the layer-decay
optimizer constructor (both from :mod:`models.mm_hornet`) and the :class:`HorFPNHead` decode head.
"""
import models.mm_hornet  # noqa: F401  (registers HorNet + the layer-decay constructor)

from .horfpn_head import HorFPNHead

__all__ = ['HorFPNHead']
