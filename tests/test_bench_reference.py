"""The train benchmark's table of stand-alone runs: reused only for the same setting, kept
whole across interruptions, and a broken file is refused by name."""

import json

import pytest

from benchmarks.bench_train import StandaloneReference

SETTING = {"space": "small", "epochs": 20, "recipe": {"lr": 0.05}}


def test_a_run_is_read_back_only_for_its_own_setting(tmp_path):
    path = tmp_path / "ref.json"
    StandaloneReference(path).add(SETTING, "arch-a", 0, 0.95, 12.5)
    ref = StandaloneReference(path)
    assert ref.get(SETTING, "arch-a", 0)["top1"] == 0.95
    assert ref.get(SETTING, "arch-a", 1) is None
    assert ref.get(SETTING, "arch-b", 0) is None
    assert ref.get({**SETTING, "epochs": 10}, "arch-a", 0) is None
    assert ref.get({**SETTING, "recipe": {"lr": 0.1}}, "arch-a", 0) is None


def test_each_run_is_on_disk_once_as_soon_as_it_is_added(tmp_path):
    path = tmp_path / "ref.json"
    ref = StandaloneReference(path)
    ref.add(SETTING, "arch-a", 0, 0.95, 12.5)
    ref.add(SETTING, "arch-b", 0, 0.93, 8.0)
    ref.add(SETTING, "arch-a", 0, 0.96, 12.0)  # measured again: replaces, never duplicates
    runs = json.loads(path.read_text())["runs"]
    assert sorted((r["arch"], r["top1"]) for r in runs) == [("arch-a", 0.96), ("arch-b", 0.93)]
    assert not path.with_suffix(".tmp").exists()


def test_a_file_that_is_not_a_reference_is_refused_by_name(tmp_path):
    path = tmp_path / "ref.json"
    path.write_text('{"runs": [}')
    with pytest.raises(SystemExit, match="ref.json is not a reference table.*--no-reference"):
        StandaloneReference(path)
