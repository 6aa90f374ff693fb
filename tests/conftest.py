import os

import numpy as np
import pytest
import torch

# One thread: tests share a 2-core machine with whatever else runs there.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def small():
    from hwnas.space import SearchSpace

    return SearchSpace.small()


@pytest.fixture(scope="session")
def default():
    from hwnas.space import SearchSpace

    return SearchSpace.default()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
