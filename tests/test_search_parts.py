"""The search's parts on their own: the pymoo operators, problem and termination are
module-level classes (importable, picklable, testable alone), the encoding's one sampler,
mutation and crossover are what both the space and the search use, arch names read back,
and every kind of thing chosen by name comes from one registry pattern."""

import pickle

import numpy as np
import pytest
from helpers import synthetic_table

from hwnas import encoding
from hwnas.errors import ArchError, HwnasError
from hwnas.predictor import LutSum
from hwnas.registry import Registry
from hwnas.search import Evaluator, SearchConfig, parse_objectives
from hwnas.search.algorithms import ALGORITHMS, EvaluationBudget, make_algorithm
from hwnas.search.problem import (ArchCrossover, ArchMutation, ArchProblem, ArchSampling,
                                  CanonicalRepair, operators)
from hwnas.space import get_space

FP = {"device": "synthetic", "cpu": "x", "threads": 1, "runtime": "onnxruntime"}


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory, small):
    table = synthetic_table(tmp_path_factory.mktemp("lut") / "t.parquet", small, FP)
    return Evaluator(small, parse_objectives("acc,latency:dev"), {"dev": LutSum(table)},
                     lambda archs: np.linspace(0.5, 0.9, len(archs)), "dev", 2.0)


def valid(space, X):
    """Every row is a canonical encoding: it decodes, and encodes back to itself."""
    return all(np.array_equal(space.encode(space.decode(x)), x) for x in X)


def test_operators_stand_alone_and_keep_archs_valid(small):
    r_genes = np.arange(len(small.resolutions))
    rng = np.random.default_rng(0)
    X = ArchSampling(small, r_genes)._do(None, 50, random_state=rng)
    assert X.shape == (50, small.n_var) and valid(small, X)
    M = ArchMutation(small, rate=0.5)._do(None, X, random_state=rng)
    assert (M != X).any()
    lo, hi = small.bounds
    assert ((M >= lo) & (M <= hi)).all()  # in bounds, though not canonical yet
    R = CanonicalRepair(small, r_genes)._do(None, M)
    assert valid(small, R)
    pair = np.stack([X[:25], X[25:]])
    C = ArchCrossover()._do(None, pair, random_state=rng)
    assert C.shape == pair.shape
    # each child gene comes from one parent, and the two children are complementary
    assert ((C[0] == X[:25]) | (C[0] == X[25:])).all()
    assert (np.where(C[0] == X[:25], C[1] == X[25:], C[1] == X[:25])).all()
    ops = [op for op in operators(small, r_genes).values() if hasattr(op, "_do")]
    assert len(ops) == 4
    for op in ops:  # module-level classes: they pickle, and the copy works alike
        copy = pickle.loads(pickle.dumps(op))
        assert type(copy) is type(op) and copy is not op


def test_the_space_and_the_search_make_the_same_moves(small):
    """SearchSpace.sample/mutate/crossover are the search's operators (one of each)."""
    rng = np.random.default_rng(7)
    X = encoding.sample(small, 5, rng)
    assert [small.decode(x) for x in X] == small.sample(5, seed=np.random.default_rng(7))
    a, b = small.sample(2, seed=1)
    child, _ = encoding.crossover(small.encode(a)[None], small.encode(b)[None],
                                  np.random.default_rng(3))
    assert small.crossover(a, b, seed=3) == small.decode(encoding.canonical(small, child)[0])
    moved = encoding.mutate(small, small.encode(a)[None], 0.3, np.random.default_rng(4))
    assert small.mutate(a, seed=4, prob=0.3) == small.decode(
        encoding.canonical(small, moved)[0])


def test_the_problem_and_its_termination(evaluator, small):
    problem = ArchProblem(evaluator, np.arange(len(small.resolutions)), limit=5)
    X = encoding.sample(small, 12, np.random.default_rng(1))
    out = {}
    problem._evaluate(X, out)
    assert out["F"].shape == (12, 2) and out["G"].shape == (12, 1)
    assert evaluator.count <= 5  # the limit on accuracy evaluations holds
    budget = EvaluationBudget(evaluator, budget=100, max_stall=3)
    progress = [budget.update(None) for _ in range(4)]
    assert progress[-1] >= 1.0 and budget.has_terminated()  # stalled: nothing new asked
    assert 0 < EvaluationBudget(evaluator, budget=evaluator.count * 2).update(None) < 1


def test_one_algorithm_table(small):
    assert ALGORITHMS.choices() == ["random", "nsga2", "nsga3", "moga", "nat"]
    r_genes = np.arange(len(small.resolutions))
    for name in ("nsga2", "nsga3", "moga"):
        algo = make_algorithm(name, 2, 12, small, r_genes, [2.0, 1.0])
        assert type(algo.mating.mutation) is ArchMutation
    with pytest.raises(HwnasError, match="'random' is not a pymoo algorithm"):
        make_algorithm("random", 2, 12, small, r_genes)
    with pytest.raises(HwnasError, match="algorithm='ga'.*one of random, nsga2"):
        SearchConfig(space="small", algorithm="ga")


@pytest.mark.parametrize("name", ["small", "default", "default-w1.2@128-224:4"])
def test_arch_names_read_back(name):
    space = get_space(name)
    for arch in space.sample(200, seed=2) + [space.smallest(), space.largest()]:
        assert space.parse_name(space.arch_name(arch)) == arch
    text = space.arch_name(space.smallest())
    for bad in ("r32", text + "-k3e3", text.replace("k3e3", "k3x3", 1),
                text.replace("k3", "k9", 1), "x" + text):
        with pytest.raises(ArchError):
            space.parse_name(bad)


def test_the_registry_pattern():
    class Oops(HwnasError):
        pass

    reg = Registry("widget", Oops)
    reg.register("a", lambda x: x + 1)

    @reg.register("b")
    def b(x):
        return x * 2

    reg.register("c", "math:sqrt")  # lazy: imported when first asked for
    assert reg.choices() == ["a", "b", "c"] and "b" in reg and len(reg) == 3
    assert reg.create("b", 4) == 8 and reg.get("c")(16) == 4.0 and b(1) == 2
    with pytest.raises(Oops, match="unknown widget 'z'; known: a, b, c"):
        reg.get("z")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", print)
    from hwnas.backends import BACKENDS
    from hwnas.export import FORMATS
    from hwnas.predictor import PREDICTORS
    from hwnas.space import SPACES

    # backends register themselves from their own modules: a new one is one new file
    assert {"torch", "onnxruntime", "tflite", "tensorrt", "adb-tflite"} == set(BACKENDS)
    assert all(BACKENDS.get(n).name == n and BACKENDS.get(n).hardware for n in BACKENDS)
    assert FORMATS.choices() == ["onnx", "tflite", "tensorrt"]
    assert "transfer" in PREDICTORS and SPACES.choices() == [
        "default", "default-w1.2", "small", "attentive", "attentive-small", "mixpath",
        "mixpath-small"]


def test_the_pymoo_bound_admits_only_releases_that_seed_operators():
    """pymoo passes ``random_state`` to operators' ``_do`` from 0.6.1.6 on (checked in
    the wheels of 0.6.1.3, 0.6.1.5 and 0.6.1.6); the search's operators need it."""
    import inspect
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version
    from pymoo.core.sampling import Sampling

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    spec = Requirement(project["project"]["optional-dependencies"]["search"][0]).specifier
    assert Version("0.6.1.5") not in spec and Version("0.6.1.6") in spec
    assert "random_state" in inspect.signature(Sampling.do).parameters  # what is installed
