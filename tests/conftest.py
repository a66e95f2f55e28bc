import pytest
import torch

# Small test problems gain nothing from threads, and a busy machine makes OpenMP spin badly.
torch.set_num_threads(1)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)
