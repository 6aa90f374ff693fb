"""The seeds' spaces: elastic stage widths (AttentiveNAS's space) and multi-path layers with
shadow BN (MixPath), through encoding, counting, the supernet, the LUT and the CLI chain."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hwnas.errors import ArchError
from hwnas.ops import count, count_batch, ops, unique_ops
from hwnas.space import get_space
from hwnas.structure import feature_names, structural_features
from hwnas.supernet import Supernet
from test_ops import hook_macs
from test_supernet import _perturb_bn


def hwnas(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "hwnas", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_older_spaces_keep_their_ids_keys_and_encodings():
    """Width genes and path sets exist only where a space has them: every stored table,
    predictor and checkpoint of the OFA and small spaces stays valid."""
    ids = {name: get_space(name).id for name in ("default", "default-w1.2", "small")}
    assert ids == {"default": "482e53ba64de", "default-w1.2": "b7374b107557",
                   "small": "ee70f57a4dcd"}
    small = get_space("small")
    arch = small.sample(1, seed=0)[0]
    assert set(arch.to_dict()) == {"r", "d", "k", "e"} and arch.key == "ee0a0172de185e49"
    assert small.n_var == 46


@pytest.mark.parametrize("name", ["attentive", "mixpath"])
def test_exact_extraction_and_counts_on_fifty_archs(name):
    """As for the OFA space: a cut-out subnet computes what the supernet computes, and the
    analytic MACs and params are those of the built network (at 64 px: the weights do
    not depend on the input size)."""
    sp = get_space(f"{name}@64")
    torch.manual_seed(0)
    net = Supernet(sp).eval()
    _perturb_bn(net, 1)
    archs = [sp.smallest(), sp.largest()] + sp.sample(48, seed=5)
    worst = 0.0
    for arch in archs:
        x = torch.randn(1, 3, arch.r, arch.r)
        net.set_active(arch)
        sub = net.subnet(arch).eval()
        with torch.no_grad():
            worst = max(worst, (net(x) - sub(x)).abs().max().item())
        c = count(arch, sp)
        assert c.params == sum(p.numel() for p in sub.parameters())
        assert c.macs == hook_macs(sub, torch.zeros(1, 3, arch.r, arch.r))
    assert worst <= 1e-4
    assert len({a.key for a in archs}) == len(archs)


@pytest.mark.parametrize("name", ["attentive-small", "mixpath-small"])
def test_vectorised_sums_and_lut_ops_cover_every_arch(name):
    sp = get_space(name)
    archs = sp.sample(150, seed=2)
    table = {o.key for o in unique_ops(sp)}
    for a in archs:
        assert {o.key for o in ops(a, sp)} <= table
        assert sp.decode(sp.encode(a)) == a and sp.parse_name(sp.arch_name(a)) == a
    batch = count_batch(archs, sp)
    assert batch[:, 0].tolist() == [sum(o.macs for o in ops(a, sp)) for a in archs]
    F = structural_features(archs, sp)
    assert F.shape == (150, len(feature_names(sp))) and np.isfinite(F).all()
    if sp.elastic_widths:  # widths vary, and the features see them
        col = feature_names(sp).index("stage4_width")
        assert set(F[:, col]) == set(sp.width_choices(4))


def test_attentive_follows_the_published_space():
    sp = get_space("attentive")
    assert [sp.width_choices(s) for s in range(6)] == [
        (24, 32), (32, 40), (64, 72), (112, 120, 128), (192, 200, 208, 216), (216, 224)]
    assert [sp.stage_depths(s) for s in range(6)] == [
        (3, 4, 5), (3, 4, 5, 6), (3, 4, 5, 6), (3, 4, 5, 6, 7, 8), (3, 4, 5, 6, 7, 8), (1, 2)]
    assert [sp.stage_expands(s) for s in range(6)] == [(4, 5, 6)] * 4 + [(6,)] * 2
    assert sp.kernels == (3, 5) and sp.resolutions == (192, 224, 256, 288)
    arch = sp.smallest()
    assert arch.w == (24, 32, 64, 112, 192, 216) and arch.d == (3, 3, 3, 3, 3, 1)


def test_widths_and_path_sets_outside_the_space_are_refused():
    att, mix, small = get_space("attentive-small"), get_space("mixpath-small"), \
        get_space("small")
    good = att.smallest().to_dict()
    for bad, words in [
        ({**good, "w": [16, 24, 32, 40, 64, 100]}, ["'w[5]'", "100", "[88, 96]"]),
        ({k: v for k, v in good.items() if k != "w"}, ["missing", "'w'"]),
        ({**good, "w": [16, 24]}, ["'w'", "6 entries"]),
        ({**good, "e": [5] * att.n_blocks}, ["'e[16]'", "allowed: [6]"]),  # stage 4: 6 only
    ]:
        with pytest.raises(ArchError) as exc:
            att.arch(bad)
        assert all(w in str(exc.value) for w in words), str(exc.value)
    with pytest.raises(ArchError, match="fixed stage widths"):
        small.arch({**small.smallest().to_dict(), "w": [16] * 5})
    m = mix.smallest().to_dict()
    for k, words in [([3, 5, 7], ["'k[0]'", "[3, 5, 7]", "[3, 5]"]),
                     ([3, 3], ["repeats"]), ([4], ["'k[0]'", "[4]"]),
                     ("3", ["'k[0]'", "kernel size"])]:
        with pytest.raises(ArchError) as exc:
            mix.arch({**m, "k": [k] + m["k"][1:]})
        assert all(w in str(exc.value) for w in words), str(exc.value)
    # a lone kernel size is a one-path set, in any order the paths are one set
    assert mix.arch({**m, "k": [3] + m["k"][1:]}) == mix.smallest()
    two = mix.arch({**m, "k": [[7, 3]] + m["k"][1:]})
    assert two.k[0] == (3, 7) and "k3+7e3" in mix.arch_name(two)


def test_bad_arch_on_the_cli_is_one_line(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({**get_space("attentive-small").smallest().to_dict(),
                             "w": [16, 24, 32, 40, 64, 100]}))
    r = hwnas("space", "show", p, "--space", "attentive-small")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'w[5]' = 100 is not allowed; allowed: [88, 96]" in r.stderr


def test_shadow_bn_picks_one_bn_per_number_of_active_paths():
    sp = get_space("mixpath-small")
    torch.manual_seed(0)
    one, two = sp.smallest(), sp.arch({**sp.smallest().to_dict(),
                                       "k": [[3, 9]] * sp.n_blocks})
    x = torch.randn(2, 3, 32, 32)
    for shadow, n_bns in ((True, 2), (False, 1)):
        net = Supernet(sp, shadow_bn=shadow).eval()
        assert len(net.stages[0][0].dw_bns) == n_bns
        outs = {}
        for arch in (one, two):
            net.set_active(arch)
            with torch.no_grad():
                outs[arch.key] = net(x)
        with torch.no_grad():  # move the two-path BN's statistics only
            for stage in net.stages:
                for block in stage:
                    block.dw_bns[-1].running_mean.add_(1.0)
        for arch in (one, two):
            net.set_active(arch)
            with torch.no_grad():
                changed = not torch.allclose(net(x), outs[arch.key])
            # with shadow BN only two-path layers see the moved BN; without, every layer
            assert changed == (len(arch.k[0]) == 2 or not shadow)
            sub = net.subnet(arch).eval()
            with torch.no_grad():
                assert torch.allclose(sub(x), net(x), atol=1e-5)


def test_stage_widths_are_reordered_by_importance_and_the_widest_net_is_unchanged():
    sp = get_space("attentive-small")
    torch.manual_seed(1)
    net = Supernet(sp).eval()
    _perturb_bn(net, 2)
    big = sp.largest()
    x = torch.randn(2, 3, big.r, big.r)
    net.set_active(big)
    with torch.no_grad():
        before = net(x)
        narrow_before = net.subnet(sp.smallest())
        net.reorganize_channels()
        assert (net(x) - before).abs().max().item() <= 1e-4
    importance = sum(b.project_conv.weight.abs().sum((1, 2, 3)) for b in net.stages[3])
    assert torch.all(importance[:-1] >= importance[1:])
    narrow_after = net.subnet(sp.smallest())
    assert not torch.equal(narrow_after[2].point_linear.conv.weight,
                           narrow_before[2].point_linear.conv.weight)


@pytest.mark.parametrize("name", ["attentive-small", "mixpath-small"])
def test_profile_fit_train_search_export_chain(name, tmp_path):
    """The whole chain on each new preset, sized for CI: a real ONNX Runtime table of one
    resolution, a fitted predictor, a one-epoch supernet, a search under a budget and an
    export verified against PyTorch."""
    from hwnas.profile import profile
    from test_predictor_cli import quick

    sp = get_space(f"{name}@32")
    lut = tmp_path / "lut"
    ops_res, sub_res = profile(quick("cpu-onnxruntime"), sp, [32], subnets=20, out_dir=lut,
                               cache_dir=tmp_path / "c", progress=False)
    ops_df, subnets = ops_res.table, sub_res.table
    assert len(ops_df) == len(unique_ops(sp, [32])) and len(subnets) == 20
    if sp.max_paths > 1:
        assert any(":p" in key for key in ops_df["key"])  # path sets are ops of their own
    r = hwnas("predictor", "fit", "--device", "cpu-onnxruntime", "--train", "14", "--lut", lut)
    assert r.returncode == 0, r.stderr
    r = hwnas("train", "--space", f"{name}@32", "--epochs", "1", "--out", tmp_path / "sn",
              "--no-shadow-bn" if sp.max_paths > 1 else "--shadow-bn")
    assert r.returncode == 0, r.stderr
    budget = float(np.median(subnets["latency_ms"]))
    r = hwnas("search", "--device", "cpu-onnxruntime", "--space", f"{name}@32",
              "--checkpoint", tmp_path / "sn" / "last.pt", "--lut", lut, "--evaluations", "10",
              "--pop-size", "6", "--budget-ms", f"{budget:.4f}", "--verify", "off",
              "--allow-drift", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    arch = best["arch"] if "arch" in best else best
    assert sp.arch(arch)
    r = hwnas("export", "--arch", tmp_path / "run", "--format", "onnx", "--checkpoint",
              tmp_path / "sn" / "last.pt", "--out", tmp_path / "exp")
    assert r.returncode == 0, r.stderr + r.stdout
    assert list((tmp_path / "exp").rglob("*.onnx"))


def test_space_list_and_info_name_the_new_presets():
    r = hwnas("space", "list")
    assert r.returncode == 0, r.stderr
    for name in ("attentive", "attentive-small", "mixpath", "mixpath-small", "AttentiveNAS",
                 "MixPath"):
        assert name in r.stdout
    for name, ops_count, genes in (("attentive", 813, 109), ("mixpath", 977, 46)):
        r = hwnas("space", "info", "--space", name)
        assert r.returncode == 0, r.stderr
        assert f"unique ops (LUT rows): {ops_count}" in r.stdout
        assert f"encoding length: {genes}" in r.stdout


def test_width_multiples_make_any_space_elastic_in_width():
    small = get_space("small")
    sp = dataclasses.replace(small, name="small-w", width_mults=(0.75, 1.0, 1.25))
    assert [sp.width_choices(s) for s in range(sp.n_stages)] == [
        (16, 24), (24, 32), (24, 32, 40), (40, 48, 64), (48, 64, 80)]  # divisible by 8
    assert sp.elastic_widths and sp.n_var == small.n_var + sp.n_stages
    assert sp.id != small.id and sp.from_dict(sp.to_dict()) == sp
    torch.manual_seed(2)
    net = Supernet(sp).eval()
    _perturb_bn(net, 4)
    for arch in sp.sample(8, seed=1):
        x = torch.randn(1, 3, arch.r, arch.r)
        net.set_active(arch)
        with torch.no_grad():
            assert torch.allclose(net(x), net.subnet(arch)(x), atol=1e-5)
        assert count(arch, sp).params == sum(p.numel() for p in net.subnet(arch).parameters())


def test_a_path_set_op_keeps_its_paths_through_a_table_row():
    import pandas as pd

    from hwnas.ops import OpSpec

    sp = get_space("mixpath-small")
    arch = sp.arch({**sp.smallest().to_dict(), "k": [[3, 9]] * sp.n_blocks})
    op = ops(arch, sp)[2]
    assert op.paths == (3, 9) and op.kernel == 9 and op.key.endswith(":p3+9")
    plain = OpSpec("mbconv", 16, 8, 16, 24, 3, 5, 2, "relu")
    frame = pd.DataFrame([op.row(), plain.row()])  # a table holding both kinds
    back = [OpSpec.from_row(r) for r in frame.to_dict("records")]
    assert back == [op, plain] and "paths" not in plain.row()
