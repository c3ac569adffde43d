import pytest
import torch

import models  # noqa: F401  (registers hornet_* with timm; the root is on sys.path: pyproject.toml `pythonpath`)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
