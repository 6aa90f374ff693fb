"""Once-for-All's own code (the ``ofa`` package), loaded as a reference to compare with.

The package imports ``torchvision`` and ``gdown`` for data loading and downloads only;
torchvision cannot be imported beside this machine's CPU torch ("operator torchvision::nms
does not exist"), so both are stubbed before ``ofa`` is imported. Only benchmarks and tests
use this; hwnas itself never imports ``ofa``. Install it with
``pip install --no-deps ofa==0.1.0.post202307202001`` (``scripts/setup.sh`` does).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types
from pathlib import Path

STUBBED = ("torchvision", "gdown")
# Once-for-All's released files: ../shared/ofa beside the project, or $HWNAS_OFA_FILES.
SHARED = Path(os.environ.get("HWNAS_OFA_FILES",
                             Path(__file__).resolve().parents[2] / "shared" / "ofa"))


class _Stub(types.ModuleType):
    __path__: list[str] = []

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Stub(spec.name)

    def exec_module(self, module):
        pass


def load_ofa() -> types.SimpleNamespace:
    """OFA's supernet class and tutorial tools; ImportError when ``ofa`` is absent."""
    import importlib.util

    if importlib.util.find_spec("ofa") is None:
        raise ImportError("the reference package is not installed: pip install --no-deps "
                          "ofa==0.1.0.post202307202001 (scripts/setup.sh does)")
    if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        for name in list(sys.modules):
            if name.split(".")[0] in STUBBED:
                del sys.modules[name]
        sys.meta_path.insert(0, _StubFinder())
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3
    from ofa.tutorial import accuracy_predictor, evolution_finder, latency_table

    return types.SimpleNamespace(OFAMobileNetV3=OFAMobileNetV3,
                                 AccuracyPredictor=accuracy_predictor.AccuracyPredictor,
                                 LatencyEstimator=latency_table.LatencyEstimator,
                                 LatencyTable=latency_table.LatencyTable,
                                 EvolutionFinder=evolution_finder.EvolutionFinder)


def latency_table(ref: types.SimpleNamespace, folder: Path, resolutions) -> object:
    """OFA's ``LatencyTable`` over local ``<r>_lookup_table.yaml`` files. Its constructor
    downloads and calls ``yaml.load`` without a Loader (fails on PyYAML >= 6), so the
    tables are read here with ``yaml.safe_load`` and handed to OFA's own estimator."""
    import yaml

    estimators = {}
    for r in resolutions:
        est = ref.LatencyEstimator.__new__(ref.LatencyEstimator)
        est.lut = yaml.safe_load((Path(folder) / f"{r}_lookup_table.yaml").read_text())
        estimators[r] = est
    table = ref.LatencyTable.__new__(ref.LatencyTable)
    table.latency_tables = estimators
    return table


def ofa_spec(arch) -> dict:
    """An hwnas arch in the form OFA's tutorial tools take (``r`` as a one-item list)."""
    o = arch.to_ofa()
    return {"ks": list(o["ks"]), "e": list(o["e"]), "d": list(o["d"]), "r": [arch.r]}
