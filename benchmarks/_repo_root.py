"""Puts the repository root on ``sys.path`` for ``python benchmarks/<script>.py``.

A script starts with only its own directory on ``sys.path``; the benchmarks import ``models``,
``calc_flops`` and ``benchmarks.reference_hornet`` from the repository root. Imported only when a
script runs as a file (``if not __package__``); ``python -m benchmarks.<script>`` needs nothing.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
