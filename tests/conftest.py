import os

import pytest
import torch

import timm_lm  # noqa: F401  (registers the LM models)

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # no test may reach the network
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
