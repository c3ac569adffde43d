"""Puts the repository root on ``sys.path`` for ``python semantic_segmentation/<script>.py``.

Python starts a script with only the script's own directory on ``sys.path``, but the scripts import
``tools.mm_runner`` and ``calc_flops``, and their configs import ``models`` and ``semantic_segmentation.mmseg_custom``,
from the repository root. Each script imports this module only when it runs as a file
(``if not __package__``); ``python -m semantic_segmentation.<script>`` and imports from the root need nothing.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
