"""Writes that a reader or a crash can never see half-done, and reads that name the file."""

import json

import pytest

from hwnas.errors import HwnasError, read_json, read_yaml
from hwnas.files import atomic_write, atomic_write_json


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write_json(tmp_path / "a.json", {"v": 1})

    def half(tmp):
        tmp.write_text('{"v": 2, "unfinis')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    atomic_write_json(tmp_path / "deep" / "b.json", [1])  # folders are made
    assert read_json(tmp_path / "deep" / "b.json") == [1]


def test_reads_name_the_file_and_what_is_wrong(tmp_path):
    (tmp_path / "dup.yaml").write_text("a: 1\nb: 2\na: 3\n")
    with pytest.raises(HwnasError, match=r"dup.yaml is not valid YAML.*key 'a' appears twice"):
        read_yaml(tmp_path / "dup.yaml")
    (tmp_path / "deep.json").write_text("[" * 10000 + "]" * 10000)
    with pytest.raises(HwnasError, match="deep.json is nested too deeply"):
        read_json(tmp_path / "deep.json")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(HwnasError, match="bin.yaml is not a text file"):
        read_yaml(tmp_path / "bin.yaml")
    with pytest.raises(HwnasError, match="cannot read file .*: Is a directory"):
        read_json(tmp_path)
