import os

import numpy as np
import pytest
import torch

# One thread: tests share a 2-core machine with whatever else runs there.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Converted models are cached per user across runs (hwnas.files.user_cache); the tests
# (and the commands they start, and the xdist workers, which inherit the variable) share
# one cache of their own, not the user's, removed when the run ends (~40 MB a run).
if "HWNAS_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["HWNAS_CACHE"] = tempfile.mkdtemp(prefix="hwnas-test-cache-")
    atexit.register(shutil.rmtree, os.environ["HWNAS_CACHE"], True)


# The longest test files, longest first (seconds on the 2-core VM, `pytest --durations`:
# 330, 250, 225, 215, 170, 145, 105, 90, 80, 60); the rest follow in collection order.
# pytest-xdist hands each worker whole files in this order (`--no-loadscope-reorder`), so
# the two workers finish together instead of one running the quickstart test alone at the end.
LONGEST_FIRST = ("test_quickstart.py", "test_export.py", "test_probe.py",
                 "test_seed_spaces.py", "test_profile.py", "test_faults.py",
                 "test_predictor_cli.py", "test_train.py", "test_backends.py", "test_ofa.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


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


def _bad_input_tally() -> dict:
    import sys

    module = sys.modules.get("test_bad_input")
    return dict(module.TALLY) if module is not None else {"tried": 0, "refused cleanly": 0}


_WORKER_TALLIES: list[dict] = []


def pytest_sessionfinish(session):
    """Under pytest-xdist a worker hands its bad-input tally to the controller."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["bad_input_tally"] = _bad_input_tally()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    _WORKER_TALLIES.append(getattr(node, "workeroutput", {}).get("bad_input_tally", {}))


def pytest_terminal_summary(terminalreporter):
    """The bad-input tally (tests/test_bad_input.py): inputs tried, inputs refused cleanly,
    summed over the xdist workers where there are any."""
    t = _bad_input_tally()
    for worker in _WORKER_TALLIES:
        for k in t:
            t[k] += worker.get(k, 0)
    if t["tried"]:
        terminalreporter.write_line(f"bad input: {t['tried']} tried, {t['refused cleanly']} "
                                    f"refused cleanly ({t['refused cleanly'] / t['tried']:.0%})")
