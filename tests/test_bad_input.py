"""Bad input, tried as an adversarial user would: fuzzed arch JSON and device YAML, and
truncated or corrupt copies of every kind of file hwnas reads, each through the command
that reads it. Every one must get the documented answer, one line naming the problem and
exit status 2, never a traceback and never a success. The counts (tried, refused cleanly)
are printed at the end of the test run."""

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers import synthetic_table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwnas.cli import main
from hwnas.devices import parse_device
from hwnas.errors import DeviceError
from hwnas.lut import write_table
from hwnas.predictor import LutSum
from hwnas.space import get_space

TALLY = {"tried": 0, "refused cleanly": 0}
FP = {"device": "dev", "cpu": "x", "threads": 1, "runtime": "onnxruntime"}


def refused(argv, capsys) -> tuple[bool, str]:
    """Run the CLI; (refused with one clean line and exit 2, what it said)."""
    TALLY["tried"] += 1
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # a traceback: the worst answer
        capsys.readouterr()
        return False, f"TRACEBACK {type(exc).__name__}: {exc}"
    err = capsys.readouterr().err.strip()
    clean = code == 2 and err.startswith("error:") and len(err.splitlines()) == 1 \
        and "Traceback" not in err
    TALLY["refused cleanly"] += clean
    return clean, err


def corruptions(data: bytes, text: bool) -> dict[str, bytes | None]:
    """Damaged copies of a file's bytes (None: a folder in its place)."""
    rng = random.Random(len(data))
    out = {"empty": b"", "one byte": data[:1], "half": data[:len(data) // 2],
           "all but the last byte": data.rstrip()[:-1], "random bytes": bytes(
               rng.randrange(256) for _ in range(max(len(data), 64))),
           "a folder": None}
    if text:
        out.update({"a list": b"[]", "an object": b"{}", "a number": b"7", "null": b"null",
                    "a string": b'"x"', "nested deeply": b"[" * 5000 + b"]" * 5000,
                    "binary": b"\x00\xff\xfe" * 40})
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory, small):
    """One valid file of every kind, and a folder laid out as each command expects."""
    root = tmp_path_factory.mktemp("valid")
    lut = root / "lut"
    table = synthetic_table(lut / "dev.parquet", small, FP)
    archs = small.sample(30, seed=1)
    y = table.predict(archs) * 1.2
    rows = [{"key": a.key, "arch": a.to_json(), "name": small.arch_name(a), "r": a.r,
             "macs": 1, "params": 1, "latency_ms": v, "p10_ms": v, "p90_ms": v, "spread": 0.0,
             "count": 5, "attempts": 1} for a, v in zip(archs, y)]
    write_table(pd.DataFrame(rows), lut / "dev.subnets.parquet",
                {"fingerprint": FP, "space": small.to_dict()})
    LutSum(table).save(lut / "dev.predictor.json")
    (root / "arch.json").write_text(small.smallest().to_json())
    (root / "device.yaml").write_text("name: d\nbackend: onnxruntime\nhardware: cpu\n")
    from hwnas.supernet import Supernet
    from hwnas.train import CHECKPOINT_FORMAT

    torch.save({"format": CHECKPOINT_FORMAT, "model": Supernet(small).state_dict(),
                "space": small.to_dict(), "space_id": small.id}, root / "ckpt.pt")
    try:
        main(["search", "--space", "small", "--objectives", "latency:dev,params",
              "--evaluations", "20", "--pop-size", "10", "--lut", str(lut), "--out",
              str(root / "run")])
    except SystemExit as exc:
        assert exc.code == 0
    return root


def place(path: Path, content: bytes | None) -> None:
    if path.is_dir():
        import shutil

        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if content is None:
        path.mkdir(parents=True)
    else:
        path.write_bytes(content)


def kinds(root: Path, tmp: Path) -> dict[str, tuple[Path, list, bool]]:
    """kind -> (the file to damage, the command that reads it, whether it is text)."""
    import shutil

    work = tmp / "work"
    shutil.copytree(root, work)
    lut = work / "lut"
    return {
        "arch JSON": (work / "arch.json", ["space", "show", work / "arch.json", "--space",
                                           "small"], True),
        "device YAML": (work / "device.yaml", ["profile", "--device", work / "device.yaml",
                                               "--space", "small", "--out", work / "p"],
                        True),
        "op table": (lut / "dev.parquet", ["predictor", "fit", "--device", "dev", "--lut",
                                           lut, "--train", "20"], False),
        "subnet table": (lut / "dev.subnets.parquet", ["predictor", "fit", "--device", "dev",
                                                       "--lut", lut, "--train", "20"], False),
        "op table (restate)": (lut / "dev.parquet", ["restate", "--device", "dev", "--lut",
                                                     lut, "--statistic", "p10"], False),
        "predictor (eval)": (lut / "dev.predictor.json", ["predictor", "eval", "--device",
                                                          "dev", "--lut", lut], True),
        "predictor (search)": (lut / "dev.predictor.json", [
            "search", "--space", "small", "--objectives", "latency:dev,params", "--lut", lut,
            "--out", work / "s"], True),
        "checkpoint": (work / "ckpt.pt", ["export", "--arch", work / "arch.json",
                                          "--checkpoint", work / "ckpt.pt", "--format",
                                          "onnx", "--out", work / "e"], False),
        "search config": (work / "run" / "config.json", ["search", "--resume",
                                                         work / "run"], True),
        "search archive": (work / "run" / "archive.parquet", ["search", "--resume",
                                                              work / "run"], False),
        "OFA supernet": (work / "ofa.pth", ["ofa", "import-supernet", work / "ofa.pth",
                                            "--out", work / "o.pt"], False),
        "OFA net.config": (work / "net.config", ["ofa", "arch", work / "net.config",
                                                 "--resolution", 224], True),
        "OFA latency table": (work / "note10" / "160_lookup_table.yaml", [
            "ofa", "import-lut", work / "note10", "--device", "n", "--space",
            "default-w1.2@160", "--lut", work / "l2"], True),
    }


def test_every_file_kind_damaged_is_refused_in_one_line(files, tmp_path, capsys):
    kinds_ = kinds(files, tmp_path)
    # valid stand-ins for the OFA files (their content does not matter: they are damaged)
    torch.save({"first_conv.conv.weight": torch.zeros(16, 3, 3, 3)}, kinds_["OFA supernet"][0])
    kinds_["OFA net.config"][0].write_text(json.dumps({"name": "MobileNetV3"}))
    kinds_["OFA latency table"][0].parent.mkdir()
    kinds_["OFA latency table"][0].write_text(yaml.safe_dump({"Conv-input:160x160x3-output:"
                                                              "80x80x24": {"mean": 1.0}}))
    failures = []
    for kind, (path, argv, text) in kinds_.items():
        original = path.read_bytes()
        for what, content in corruptions(original, text).items():
            place(path, content)
            ok, err = refused(argv, capsys)
            if not ok:
                failures.append(f"{kind} / {what}: {err[-300:] or 'no error at all'}")
        place(path, original)
    assert not failures, "\n".join(failures)


def test_the_reported_wrong_successes(files, tmp_path, capsys):
    """Each of these once succeeded where it should not have."""
    work = tmp_path
    (work / "empty.json").write_text("[]")
    assert refused(["space", "show", work / "empty.json", "--space", "small"], capsys)[0]
    small = get_space("small")
    (work / "two.json").write_text(json.dumps([small.smallest().to_dict(), {"r": 1}]))
    ok, err = refused(["space", "show", work / "two.json", "--space", "small"], capsys)
    assert ok and "entry 1" in err  # every entry is checked, the bad one named
    (work / "pair.json").write_text(json.dumps([a.to_dict() for a in small.sample(2)]))
    ok, err = refused(["export", "--arch", work / "pair.json", "--space", "small",
                       "--format", "onnx", "--out", work / "x"], capsys)
    assert ok and "holds 2 archs" in err  # not silently the first
    (work / "dup.yaml").write_text("name: d\nname: e\nbackend: onnxruntime\nhardware: cpu\n")
    ok, err = refused(["profile", "--device", work / "dup.yaml", "--space", "small",
                       "--out", work / "p"], capsys)
    assert ok and "key 'name' appears twice" in err  # not silently the last one
    # a predictor fitted on another fingerprint than the device's table: search refuses it
    import shutil

    lut = work / "lut"
    shutil.copytree(files / "lut", lut)
    doc = json.loads((lut / "dev.predictor.json").read_text())
    doc["fingerprint"]["threads"] = 8
    (lut / "dev.predictor.json").write_text(json.dumps(doc))
    ok, err = refused(["search", "--space", "small", "--objectives", "latency:dev,params",
                       "--lut", lut, "--out", work / "s"], capsys)
    assert ok and "threads" in err and "another device" in err


def test_hostile_device_values_are_refused(tmp_path, capsys):
    cases = {"affinity": "cpu_affinity: [999999]", "runs": "protocol:\n  runs: 100000000000",
             "threads": "threads: 100000", "runs as text": "protocol:\n  runs: 1e11",
             "python object": "description: !!python/object/apply:os.system ['echo hi']"}
    said = {}
    for what, extra in cases.items():
        path = tmp_path / f"{what.replace(' ', '_')}.yaml"
        path.write_text("name: d\nbackend: onnxruntime\nhardware: cpu\n" + extra + "\n")
        ok, said[what] = refused(["profile", "--device", path, "--space", "small", "--out",
                                  tmp_path / "p"], capsys)
        assert ok, (what, said[what])
    assert "cannot pin to cores [999999]" in said["affinity"]
    assert "'protocol.runs' = 100000000000 is more than 100,000" in said["runs"]
    assert "'threads' must be in 1..1024" in said["threads"]
    assert "'protocol.runs' must be an integer" in said["runs as text"]
    assert "not valid YAML" in said["python object"]  # and nothing ran


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(
    st.sampled_from(["name", "backend", "hardware", "threads", "precision", "protocol",
                     "android", "cpu_affinity", "cuda_device", "workspace_mb", "other"]),
    st.recursive(st.none() | st.booleans() | st.integers(-10, 10 ** 12) | st.floats()
                 | st.text(max_size=8), lambda c: st.lists(c, max_size=3)
                 | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8)))
def test_fuzzed_device_descriptions_raise_only_device_errors(data):
    TALLY["tried"] += 1
    data.setdefault("name", "d")
    try:
        parse_device(data, "fuzz.yaml")
    except DeviceError:
        pass
    TALLY["refused cleanly"] += 1  # any other exception fails the test


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_device_yaml_text_is_read_or_refused_by_name(tmp_path_factory, text):
    from hwnas.devices import load_device

    TALLY["tried"] += 1
    path = tmp_path_factory.mktemp("y") / "fuzz.yaml"
    path.write_text(text)
    try:
        load_device(path)
    except DeviceError as exc:
        assert str(path) in str(exc)
    TALLY["refused cleanly"] += 1


def test_an_unknown_subnet_sampling_is_refused_before_anything_is_timed(tmp_path, capsys):
    ok, err = refused(["profile", "--device", "cpu-onnxruntime", "--space", "small",
                       "--subnets", 4, "--sampling", "even", "--out", tmp_path], capsys)
    assert ok and "'even'" in err and "'mixed', 'uniform', 'spread'" in err, err
    assert not list(tmp_path.iterdir())  # no table was started


def test_restating_what_cannot_be_restated_is_refused(files, tmp_path, capsys):
    """No tables, an unknown device, a statistic the rows do not record: each refused by
    name, the tables untouched."""
    lut = files / "lut"
    before = {p.name: p.read_bytes() for p in lut.glob("dev*.parquet")}
    ok, err = refused(["restate", "--device", "cpu-tflite", "--lut", tmp_path], capsys)
    assert ok and "no tables of cpu-tflite" in err, err
    ok, err = refused(["restate", "--device", "nope", "--lut", lut], capsys)
    assert ok and "no device named 'nope'" in err, err
    ok, err = refused(["restate", "--device", "dev", "--lut", lut, "--statistic", "mean"],
                      capsys)
    assert ok and "asked for the mean" in err and "allowed: p10" in err, err
    assert {p.name: p.read_bytes() for p in lut.glob("dev*.parquet")} == before
