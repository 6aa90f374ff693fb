import json
import subprocess
import sys


def hwnas(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hwnas", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_sample_then_show(tmp_path):
    out = tmp_path / "archs.json"
    r = hwnas("space", "sample", "--space", "small", "--n", "3", "--seed", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    archs = json.loads(out.read_text())
    assert len(archs) == 3 and set(archs[0]) == {"r", "d", "k", "e"}
    r = hwnas("space", "show", str(out), "--space", "small")
    assert r.returncode == 0, r.stderr
    from hwnas.ops import count
    from hwnas.space import SearchSpace

    sp = SearchSpace.small()
    first = sp.arch(archs[0])
    assert sp.arch_name(first) in r.stdout
    assert f"MACs {count(first, sp).macs / 1e6:.2f} M" in r.stdout
    assert "final_expand" in r.stdout and "classifier" in r.stdout


def test_sample_to_stdout_is_one_object():
    r = hwnas("space", "sample", "--space", "small", "--seed", "1")
    assert r.returncode == 0
    assert set(json.loads(r.stdout)) == {"r", "d", "k", "e"}


def test_bad_arch_file_is_one_clear_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"r": 224, "d": [2] * 5, "k": [3] * 20, "e": [3] * 20}))
    r = hwnas("space", "show", str(p), "--space", "small")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "'r' = 224 is not allowed" in r.stderr and "[32, 40, 48]" in r.stderr


def test_unknown_space_is_clear():
    r = hwnas("space", "sample", "--space", "giant")
    assert r.returncode == 2 and "unknown search space 'giant'" in r.stderr
    assert "Traceback" not in r.stderr


def test_info_reports_unique_ops():
    r = hwnas("space", "info", "--space", "default")
    assert r.returncode == 0
    assert "unique ops (LUT rows): 449" in r.stdout
