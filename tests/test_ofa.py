"""Once-for-All interop: every artefact read into hwnas must mean what OFA's own code says
it means. The ``ofa`` package is the reference; real released files come from
``../shared/ofa/`` (tests that need them skip, saying so, where the folder is absent)."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from hwnas.cli import main
from hwnas.errors import ArchError, LutError
from hwnas.lut import LatencyTable
from hwnas.ofa import (OfaAccuracyPredictor, OfaError, arch_from_net_config,
                       import_latency_tables, import_supernet, read_net_config)
from hwnas.space import OFA_RESOLUTIONS, get_space
from hwnas.train import load_supernet
from ofa_reference import latency_table, legacy_keys, ofa, ofa_spec, random_ofa_supernet, shared

WIDTHS = [(1.0, "default"), (1.2, "default-w1.2")]


def cli(argv, capsys):
    """Run the hwnas CLI; (exit status, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------ supernet weights
@pytest.mark.parametrize("width_mult,space", WIDTHS)
def test_imported_supernet_computes_what_ofa_computes(width_mult, space, tmp_path):
    net = random_ofa_supernet(width_mult, seed=int(width_mult * 10))
    current, legacy = tmp_path / "current.pth", tmp_path / "legacy.pth"
    torch.save(net.state_dict(), current)                          # a bare state dict
    torch.save({"state_dict": legacy_keys(net.state_dict())}, legacy)  # released files' form
    import_supernet(current, space, tmp_path / "a.pt")
    import_supernet(legacy, space, tmp_path / "b.pt")
    a, b = load_supernet(tmp_path / "a.pt"), load_supernet(tmp_path / "b.pt")
    assert a.space.resolutions == OFA_RESOLUTIONS  # the sizes OFA trained at
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k  # both key styles give the same weights
    worst = 0.0
    g = torch.Generator().manual_seed(0)
    for arch in a.space.sample(20, seed=1):
        spec = ofa_spec(arch)
        net.set_active_subnet(ks=spec["ks"], e=spec["e"], d=spec["d"])
        reference = net.get_active_subnet(preserve_weight=True).eval()
        x = torch.randn(2, 3, arch.r, arch.r, generator=g)
        with torch.no_grad():
            want = reference(x)
            got = a.subnet(arch).eval()(x)
        assert (want[0] - want[1]).abs().max() > 1e-3 * want.abs().max()  # input-dependent
        worst = max(worst, float((got - want).abs().max() / want.abs().max()))
    assert worst <= 1e-5


def test_a_checkpoint_loads_at_any_resolutions_of_its_space(tmp_path):
    torch.save(random_ofa_supernet(1.0).state_dict(), tmp_path / "w.pth")
    import_supernet(tmp_path / "w.pth", "default", tmp_path / "c.pt")
    net = load_supernet(tmp_path / "c.pt", get_space("default"))
    assert net.space.resolutions == (160, 176, 192, 208, 224)
    from hwnas.train import TrainError

    with pytest.raises(TrainError, match="space 'default@128-224:4'.*not 'default-w1.2'"):
        load_supernet(tmp_path / "c.pt", get_space("default-w1.2"))


def test_bad_supernet_files_are_refused_by_name(tmp_path, capsys):
    state = random_ofa_supernet(1.0).state_dict()
    good = tmp_path / "good.pth"
    torch.save(state, good)
    raw = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(OfaError, match="truncated.pth: not a readable PyTorch checkpoint"):
        import_supernet(tmp_path / "truncated.pth", "default", tmp_path / "x.pt")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "foreign.pth")
    with pytest.raises(OfaError, match="key 'fc.weight' is not part of Once-for-All's"):
        import_supernet(tmp_path / "foreign.pth", "default", tmp_path / "x.pt")
    with pytest.raises(OfaError, match=r"'first_conv.conv.weight' has shape \(16, 3, 3, 3\), "
                                       r"space 'default-w1.2@128-224:4' needs \(24, 3, 3, 3\)"):
        import_supernet(good, "default-w1.2", tmp_path / "x.pt")
    partial = dict(state)
    partial.pop("blocks.7.conv.depth_conv.conv.7to5_matrix")
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(OfaError, match="lacks 1 supernet weight.*stages.1.2.kernel_transforms"):
        import_supernet(tmp_path / "partial.pth", "default", tmp_path / "x.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(OfaError, match="evil.pth: holds Python objects beyond tensors"):
        import_supernet(tmp_path / "evil.pth", "default", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()  # nothing written half
    code, out, err = cli(["ofa", "import-supernet", str(tmp_path / "foreign.pth"), "--out",
                          str(tmp_path / "x.pt")], capsys)
    assert code == 2 and "foreign.pth" in err and "'fc.weight'" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out


# ----------------------------------------------------------------- specialised subnets
@pytest.mark.parametrize("width_mult,space", WIDTHS)
def test_net_configs_written_by_ofa_read_back_as_the_same_arch(width_mult, space):
    net = random_ofa_supernet(width_mult)
    sp = get_space(space).with_resolutions(OFA_RESOLUTIONS)
    for arch in sp.sample(15, seed=2):
        spec = ofa_spec(arch)
        net.set_active_subnet(ks=spec["ks"], e=spec["e"], d=spec["d"])
        config = json.loads(json.dumps(net.get_active_net_config()))
        got, got_space = arch_from_net_config(config, arch.r)
        assert got == arch and got_space.id == sp.id


def test_released_specialised_subnets(capsys, tmp_path):
    folder = shared("specialized")
    widths = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        if d.name.startswith("cpu_lat"):
            with pytest.raises(ArchError, match="'ProxylessNASNets' network, not Once-for-"):
                read_net_config(d / "net.config")
            continue
        if "_lat-64ms" in d.name:
            with pytest.raises(ArchError, match=r"image_size = 260 is outside.*--space "
                                                r"default-w1.2@128-224:4,260"):
                read_net_config(d / "net.config")
            arch, sp = read_net_config(d / "net.config",
                                       space="default-w1.2@128-224:4,260")
            assert arch.r == 260
            continue
        arch, sp = read_net_config(d / "net.config")
        widths[d.name.split("_top1")[0]] = sp.name.partition("@")[0]
        run = json.loads((d / "run.config").read_text())
        assert arch.r == run["image_size"]
        config = json.loads((d / "net.config").read_text())
        assert sum(arch.d) + 1 == len(config["blocks"])
    assert widths == {"LG-G8_lat-11ms": "default", "flops-389M": "default-w1.2",
                      "note10_lat-16ms": "default", "note10_lat-30ms": "default-w1.2",
                      "note10_lat-8ms": "default", "pixel1_lat-20ms": "default"}
    # the flops-389M net has the MACs its name says
    from hwnas.ops import count

    arch, sp = read_net_config(folder / "flops-389M_top1-79.1_finetune-75" / "net.config")
    assert count(arch, sp).macs / 1e6 == pytest.approx(389, abs=1)
    code, out, err = cli(["ofa", "arch", str(folder / "note10_lat-8ms_top1-71.4_finetune-25"
                                             / "net.config"), "--out",
                          str(tmp_path / "a.json")], capsys)
    assert code == 0 and json.loads((tmp_path / "a.json").read_text())["r"] == 160
    code, out, err = cli(["ofa", "arch", str(folder / "cpu_lat-10ms_top1-71.1_finetune-25"
                                             / "net.config")], capsys)
    assert code == 2 and "ProxylessNASNets" in err and "Traceback" not in err


def test_net_config_fields_outside_the_space_are_named():
    net = random_ofa_supernet(1.0)
    net.set_active_subnet(ks=3, e=3, d=2)
    config = json.loads(json.dumps(net.get_active_net_config()))
    config["blocks"][2]["conv"]["kernel_size"] = 9
    with pytest.raises(ArchError, match=r"blocks\[2\].conv.kernel_size = 9 is not allowed"):
        arch_from_net_config(config, 224)
    config = json.loads(json.dumps(net.get_active_net_config()))
    config["blocks"].insert(3, config["blocks"][2])
    config["blocks"].insert(3, config["blocks"][2])
    config["blocks"].insert(3, config["blocks"][2])
    with pytest.raises(ArchError, match="stage 0 .* has 5 block"):
        arch_from_net_config(config, 224)
    with pytest.raises(ArchError, match="no input resolution"):
        arch_from_net_config(net.get_active_net_config(), None)


# ------------------------------------------------------------------ accuracy predictor
def test_accuracy_predictor_equals_ofas(tmp_path):
    path = shared("acc_predictor.pth")
    ref = ofa().AccuracyPredictor(pretrained=False, device="cpu")
    ref.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    space = get_space("default-w1.2")
    mine = OfaAccuracyPredictor(path, space)
    archs = space.sample(1000, seed=4)
    rng = np.random.default_rng(0)
    specs = []
    for a in archs:  # OFA's unused slots hold anything; the encoding must zero them
        spec = ofa_spec(a)
        for s, d in enumerate(spec["d"]):
            for j in range(4 * s + d, 4 * s + 4):
                spec["ks"][j], spec["e"][j] = int(rng.choice([3, 5, 7])), int(rng.choice([3, 4, 6]))
        specs.append(spec)
    want = ref.predict_accuracy(specs).numpy()[:, 0]
    got = mine(archs)
    assert np.abs(got - want).max() <= 1e-6
    assert 0.7 < got.min() and got.max() < 0.85 and got.std() > 0.005  # ImageNet top-1


def test_accuracy_predictor_refuses_what_it_was_not_fitted_on(tmp_path):
    path = shared("acc_predictor.pth")
    with pytest.raises(OfaError, match="for the w1.2 supernet"):
        OfaAccuracyPredictor(path, "default")
    wide = OfaAccuracyPredictor(path, "default-w1.2@128-224:4")
    arch = wide.space.arch(r=156, d=[2] * 5, k=[3] * 20, e=[3] * 20)
    with pytest.raises(OfaError, match="resolution 156 is outside its domain"):
        wide([arch])
    torch.save({"0.weight": torch.zeros(400, 100), "0.bias": torch.zeros(400)},
               tmp_path / "other.pth")
    with pytest.raises(OfaError, match=r"'0.weight' has shape \(400, 100\)"):
        OfaAccuracyPredictor(tmp_path / "other.pth")


# --------------------------------------------------------------------- latency tables
def test_latency_tables_predict_what_ofa_predicts(tmp_path):
    folder = shared("note10")
    ref = ofa()
    space = get_space("default-w1.2")
    res = import_latency_tables(folder, "note10", space, tmp_path)
    assert res.rows == 475 and not res.notes
    table = latency_table(ref, folder, space.resolutions)
    archs = space.sample(150, seed=5)
    want = np.array([table.predict_efficiency(ofa_spec(a)) for a in archs])
    got = LatencyTable.load(res.table).predict(archs)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    from hwnas.predictor import load_predictor

    pred = load_predictor(res.predictor, space=space)
    np.testing.assert_allclose(pred.predict(archs), want, rtol=1e-12)


def test_bad_latency_tables_are_refused_by_name(tmp_path, capsys):
    folder = shared("note10")
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    f = bad / "192_lookup_table.yaml"
    data = yaml.safe_load(f.read_text())
    data["Conv_9-input:1x1x1x1"] = {"count": 1, "mean": 1.0, "std": 0.0}
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(LutError, match="192_lookup_table.yaml: key 'Conv_9-input:1x1x1x1' is "
                                       "not an OFA latency-table key"):
        import_latency_tables(bad, "x", "default-w1.2", tmp_path / "lut")
    del data["Conv_9-input:1x1x1x1"]
    key = next(k for k in data if k.startswith("expanded_conv"))
    odd = key.replace("expand:", "expand:1")
    data[odd] = data.pop(key)
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(LutError, match="lacks 'expanded_conv"):
        import_latency_tables(bad, "x", "default-w1.2", tmp_path / "lut")
    data[key] = {"count": 3, "std": 0.1}
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(LutError, match=f"{key}: needs a map with 'mean'"):
        import_latency_tables(bad, "x", "default-w1.2", tmp_path / "lut")
    data[key] = {"count": 3, "mean": 0.5, "std": 0.1}
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(LutError, match=f"key '{odd}' is no op of space"):
        import_latency_tables(bad, "x", "default-w1.2", tmp_path / "lut")
    f.write_text("a: [1, 2\n")
    with pytest.raises(LutError, match="192_lookup_table.yaml is not valid YAML"):
        import_latency_tables(bad, "x", "default-w1.2", tmp_path / "lut")
    f.unlink()
    with pytest.raises(LutError, match=r"no table for resolution\(s\) \[192\]"):
        import_latency_tables(bad, "x", "default-w1.2", tmp_path / "lut")
    res = import_latency_tables(bad, "x", "default-w1.2@160,176,208,224", tmp_path / "lut")
    assert res.rows > 0
    assert not (tmp_path / "lut" / "x.partial").exists()
    code, out, err = cli(["ofa", "import-lut", str(folder), "--device", "n", "--space",
                          "default", "--lut", str(tmp_path / "l2")], capsys)
    assert code == 2 and "another width" in err and "Traceback" not in err
    assert not (tmp_path / "l2" / "n.parquet").exists()


# ------------------------------------------------------------------- search with both
def test_search_on_ofas_predictor_and_tables(tmp_path, capsys):
    import_latency_tables(shared("note10"), "note10", "default-w1.2", tmp_path / "lut")
    predictor = shared("acc_predictor.pth")
    code, out, err = cli(["search", "--space", "default-w1.2", "--device", "note10",
                          "--budget-ms", "20,30", "--accuracy", f"ofa-predictor:{predictor}",
                          "--evaluations", "300", "--lut", str(tmp_path / "lut"),
                          "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    space = get_space("default-w1.2")
    acc = OfaAccuracyPredictor(predictor, space)
    table = LatencyTable.load(tmp_path / "lut" / "note10.parquet")
    for budget in ("20", "30"):
        arch = space.arch(json.loads((tmp_path / "run" / f"best-{budget}ms.json").read_text()))
        best = summary["best"][budget]
        assert table.predict(arch) <= float(budget)
        assert best["acc"] == pytest.approx(float(acc([arch])[0]), abs=1e-9)
    assert summary["best"]["30"]["acc"] > summary["best"]["20"]["acc"]
    # the predictor's domain is checked before any work
    code, out, err = cli(["search", "--space", "default-w1.2@128-224:4", "--objectives",
                          "acc,params", "--accuracy", f"ofa-predictor:{predictor}",
                          "--out", str(tmp_path / "run2")], capsys)
    assert code == 2 and "resolution 128 is outside its domain" in err
    assert not (tmp_path / "run2").exists()


# ------------------------------------------------------------------------- the chain
@pytest.mark.slow
def test_the_imagenet_chain_on_ofas_artefacts(tmp_path, capsys):
    """README's "ImageNet with Once-for-All's supernet": import the supernet (initialised
    by OFA's own code), the predictor and the Note10 tables; search under a budget; export
    the winner with the imported weights to ONNX and TFLite, verified; evaluate it on an
    ImageNet-style folder (1,000 class folders)."""
    from PIL import Image

    torch.save({"state_dict": random_ofa_supernet(1.2, seed=7).state_dict()},
               tmp_path / "ofa_mbv3_d234_e346_k357_w1.2")
    steps = [
        ["ofa", "import-supernet", str(tmp_path / "ofa_mbv3_d234_e346_k357_w1.2"), "--space",
         "default-w1.2", "--out", str(tmp_path / "ofa-w1.2.pt")],
        ["ofa", "import-lut", str(shared("note10")), "--device", "note10", "--lut",
         str(tmp_path / "lut")],
        ["search", "--space", "default-w1.2", "--device", "note10", "--budget-ms", "25",
         "--accuracy", f"ofa-predictor:{shared('acc_predictor.pth')}", "--algo", "nsga2",
         "--evaluations", "200", "--lut", str(tmp_path / "lut"), "--out",
         str(tmp_path / "run")],
        ["export", "--arch", str(tmp_path / "run"), "--checkpoint", str(tmp_path / "ofa-w1.2.pt"),
         "--format", "onnx,tflite", "--out", str(tmp_path / "export")],
    ]
    for argv in steps:
        code, out, err = cli(argv, capsys)
        assert code == 0, (argv, err)
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["space"] == "default-w1.2@128-224:4"
    assert {c["variant"] for c in manifest["checks"] if c["ok"]} == {"onnx", "tflite"}
    assert manifest["weights"].endswith("ofa-w1.2.pt")
    arch = get_space("default-w1.2").arch(json.loads((tmp_path / "run" / "best.json").read_text()))
    assert LatencyTable.load(tmp_path / "lut" / "note10.parquet").predict(arch) <= 25
    # the exported ONNX model computes what OFA's own subnet computes with these weights
    import onnxruntime as ort

    net = random_ofa_supernet(1.2, seed=7)
    spec = ofa_spec(arch)
    net.set_active_subnet(ks=spec["ks"], e=spec["e"], d=spec["d"])
    x = torch.randn(1, 3, arch.r, arch.r)
    with torch.no_grad():
        want = net.get_active_subnet(preserve_weight=True).eval()(x).numpy()
    sess = ort.InferenceSession(str(tmp_path / "export" / "model.onnx"))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max() + 1e-6

    for split, n in (("train", 3), ("val", 2)):  # ImageNet's layout, a few images
        for c in range(1000):
            (tmp_path / "imagenet" / split / f"n{c:08d}").mkdir(parents=True)
        for c in range(0, 1000, 100):
            for i in range(n):
                Image.fromarray(np.full((40, 50, 3), (c % 255, i * 60, 90), np.uint8)).save(
                    tmp_path / "imagenet" / split / f"n{c:08d}" / f"{i}.JPEG")
    code, out, err = cli(["evaluate", "--arch", str(tmp_path / "run" / "best.json"),
                          "--checkpoint", str(tmp_path / "ofa-w1.2.pt"), "--data",
                          f"imagefolder:{tmp_path / 'imagenet'}", "--calib-images", "30",
                          "--batch-size", "10", "--workers", "2"], capsys)
    assert code == 0, err
    assert "top-1" in out and "top-5" in out and "20" in out
