"""`hwnas predictor fit/eval/transfer` end to end on real (small) measured tables."""

import dataclasses
import json
import re
import subprocess
import sys

import pytest

from hwnas.devices import load_device
from hwnas.profile import profile


def quick(name):
    dev = load_device(name)
    return dataclasses.replace(dev, protocol=dataclasses.replace(dev.protocol, rounds=2,
                                                                 runs=10, max_retries=0))


@pytest.fixture(scope="module")
def lut_dir(tmp_path_factory, small):
    out = tmp_path_factory.mktemp("lut")
    profile(quick("cpu-onnxruntime"), small, [32], subnets=30, out_dir=out,
            cache_dir=out / "c", progress=False)
    profile(quick("cpu-torch"), small, [32], subnets=26, seed=3, out_dir=out,
            cache_dir=out / "c2", progress=False)
    return out


def hwnas(*args):
    return subprocess.run([sys.executable, "-m", "hwnas", *args], capture_output=True,
                          text=True, timeout=600)


def test_fit_eval_transfer(lut_dir):
    r = hwnas("predictor", "fit", "--device", "cpu-onnxruntime", "--train", "20", "--lut",
              str(lut_dir))
    assert r.returncode == 0, r.stderr
    for word in ("lut-sum", "lut-linear", "macs-linear", "xgboost", "Kendall", "held out 10"):
        assert word in r.stdout
    pred = lut_dir / "cpu-onnxruntime.predictor.json"
    doc = json.loads(pred.read_text())
    assert len(doc["extra"]["train_keys"]) == 20 and len(doc["extra"]["heldout_keys"]) == 10
    assert not set(doc["extra"]["train_keys"]) & set(doc["extra"]["heldout_keys"])
    assert (lut_dir / "cpu-onnxruntime.predictor.png").stat().st_size > 10_000
    r = hwnas("predictor", "eval", "--device", "cpu-onnxruntime", "--lut", str(lut_dir))
    assert r.returncode == 0, r.stderr
    assert "on 10 held-out subnets" in r.stdout
    r = hwnas("predictor", "transfer", "--from", "cpu-onnxruntime", "--device", "cpu-torch",
              "--k", "10", "--lut", str(lut_dir))
    assert r.returncode == 0, r.stderr
    assert "transfer from cpu-onnxruntime (k=10)" in r.stdout
    assert json.loads((lut_dir / "cpu-torch.predictor.json").read_text())["kind"] == "transfer"
    # a predictor of one device is refused for another device's subnets
    r = hwnas("predictor", "eval", "--device", "cpu-torch", "--predictor", str(pred), "--lut",
              str(lut_dir))
    assert r.returncode == 2 and "another device" in r.stderr and "Traceback" not in r.stderr


def test_clear_errors(lut_dir):
    r = hwnas("predictor", "fit", "--device", "cpu-onnxruntime", "--train", "30", "--lut",
              str(lut_dir))
    assert r.returncode == 2 and "leaves none held out" in r.stderr
    r = hwnas("predictor", "fit", "--device", "cpu-onnxruntime", "--kind", "gp", "--lut",
              str(lut_dir), "--train", "5")
    # the choices come from the predictor registry, so --help lists them and click refuses
    said = " ".join(re.sub("[│╭╮╰╯─]", " ", r.stderr).split())  # rich boxes wrap lines
    assert r.returncode == 2 and "'gp' is not one of 'lut-sum'" in said and "xgboost" in said
    r = hwnas("predictor", "fit", "--device", "nowhere", "--lut", str(lut_dir))
    assert r.returncode == 2 and "no such lookup table" in r.stderr


def test_fit_with_k_few_shot_on_real_tables(lut_dir):
    r = hwnas("predictor", "fit", "--device", "cpu-torch", "--k", "12", "--prior",
              "cpu-onnxruntime", "--lut", str(lut_dir))
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    for word in ("few-shot from 12 subnets (structure, LUT, cpu-onnxruntime)", "14 held out",
                 "weighed by leave-one-out", "macs-linear", "blocks-linear", "lut-linear",
                 "ceiling"):
        assert word in out, word
    doc = json.loads((lut_dir / "cpu-torch.predictor.json").read_text())
    assert doc["kind"] == "fewshot" and doc["extra"]["k"] == 12
    assert doc["state"]["priors"] == {"cpu-onnxruntime": "cpu-onnxruntime.predictor.json"}
    # k must leave subnets to judge it; a batch mismatch is named
    r = hwnas("predictor", "fit", "--device", "cpu-torch", "--k", "26", "--lut", str(lut_dir))
    assert r.returncode == 2 and "--k 26 does not fit cpu-torch's 26 measured subnets" in \
        r.stderr and "5..25" in r.stderr and "Traceback" not in r.stderr


def test_a_predictor_of_another_batch_is_refused(lut_dir, tmp_path):
    import shutil

    from hwnas.lut import read_table, write_table
    from hwnas.predictor import PredictorError, load_predictor

    folder = tmp_path / "lut"
    shutil.copytree(lut_dir, folder)
    path = folder / "cpu-onnxruntime.parquet"
    df, meta = read_table(path)
    meta.pop("schema_version")
    meta["fingerprint"] = {**meta["fingerprint"], "batch": 32}
    with pytest.raises(PredictorError, match="fitted at batch 1; these tables are at batch "
                                             "32.*predictor fit --device cpu-onnxruntime"):
        load_predictor(folder / "cpu-onnxruntime.predictor.json",
                       fingerprint=meta["fingerprint"], allow_mismatch=True)
    write_table(df, path, meta)
    r = hwnas("search", "--space", "small", "--device", "cpu-onnxruntime", "--objectives",
              "latency,params", "--evaluations", "8", "--pop-size", "4", "--lut", str(folder),
              "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "fitted at batch 1" in r.stderr and "Traceback" not in r.stderr
