"""``hwnas quickstart``: the whole chain, small, on this machine's CPU.

profile ONNX Runtime and TFLite (small space: every op plus sampled subnets, TFLite ops
converted many to a file and cached across runs) -> fit the same predictor kind for each
and judge it on held-out subnets -> train the supernet briefly on the embedded digits
-> search under a latency budget (default: the middle of the measured range), the best
arch measured on the CPU before it is reported -> export the winner to ONNX and TFLite,
verify both, measure both -> one closing table and a static HTML report. Everything goes
under one folder; a re-run reuses what is still valid (the tables, the checkpoint, the
search archive).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwnas.display import Table
from hwnas.errors import HwnasError, check_settings
from hwnas.files import atomic_write_json, atomic_write_text
from hwnas.space import PRESET_ORIGINS


class QuickstartError(HwnasError, ValueError):
    """Bad quickstart settings."""


@dataclass(frozen=True)
class QuickstartConfig:
    """Sizes of each step; ``scaled(minutes)`` stretches the expensive ones."""

    out: str = "runs/quickstart"
    budget_ms: float | None = None
    device: str = "cpu-onnxruntime"
    tflite_device: str = "cpu-tflite"
    space: str = "small"
    subnets: int = 150           # measured end to end; 100 fit the predictor, the rest judge it
    train_epochs: int = 15
    train_max_steps: int | None = None
    evaluations: int = 100       # accuracy evaluations of the search
    tflite_subnets: int = 90     # measured with TFLite; 2/3 fit its predictor, the rest judge
    pop_size: int = 16
    algorithm: str = "nsga2"
    protocol_runs: int | None = None    # override the device's timed runs (tests)
    protocol_rounds: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_settings([
            ("budget_ms", self.budget_ms is None or self.budget_ms > 0, "a positive number"),
            ("subnets", self.subnets >= 6, ">= 6 (some fit the predictor, some judge it)"),
            ("train_epochs", self.train_epochs >= 1, ">= 1"),
            ("evaluations", self.evaluations >= 4, ">= 4"),
            ("tflite_subnets", self.tflite_subnets >= 6, ">= 6 (some fit the predictor, "
                                                           "some judge it)"),
            ("pop_size", self.pop_size >= 4, ">= 4")], QuickstartError, "quickstart setting",
            self)

    @classmethod
    def from_flags(cls, minutes: float = 10.0, **settings: Any) -> "QuickstartConfig":
        """Sizes scaled to ``minutes``, then the ones given (None: keep the scaled one)."""
        base = {k: settings.pop(k) for k in ("out", "budget_ms", "seed") if k in settings}
        cfg = cls(**base).scaled(minutes)
        return dataclasses.replace(cfg, **{k: v for k, v in settings.items() if v is not None})

    def scaled(self, minutes: float) -> "QuickstartConfig":
        """Sizes for a time budget of ``minutes`` (10 gives the defaults)."""
        if not minutes > 0:
            raise QuickstartError(f"--minutes must be positive, got {minutes}")
        f = minutes / 10.0
        return dataclasses.replace(self, train_epochs=max(1, round(self.train_epochs * f)),
                                   evaluations=max(8, round(self.evaluations * f)),
                                   subnets=max(12, round(self.subnets * min(f, 2.0))),
                                   tflite_subnets=max(12, round(self.tflite_subnets
                                                                * min(f, 2.0))))


@dataclass
class QuickstartResult:
    out: Path
    arch: dict[str, Any]
    name: str
    accuracy: float
    macs: int
    params: int
    budget_ms: float
    latency: list[dict[str, Any]]
    predictor_metrics: dict[str, dict[str, float]]  # device -> held-out metrics
    files: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    device: str = ""
    verify: dict[str, Any] | None = None             # the search's on-device checks
    noise: dict[str, dict[str, float]] = field(default_factory=dict)  # device -> spreads

    def tables(self) -> list[Table]:
        """The chosen network and the files, as ``hwnas quickstart`` prints them."""
        chosen = Table("hwnas quickstart: the chosen network", ["", ""], [
            ["arch", self.name],
            ["top-1 (digits val, BN recalibrated)", f"{self.accuracy:.2%}"],
            ["MACs / params", f"{self.macs / 1e6:.2f} M / {self.params / 1e6:.3f} M"],
            ["budget", f"{self.budget_ms:.3f} ms on {self.device}"]])
        for r in self.latency:
            pred = "no prediction" if r.get("predicted_ms") is None else \
                f"predicted {r['predicted_ms']:.3f} ms"
            meas = "not measured" if r.get("measured_ms") is None else \
                f"measured {r['measured_ms']:.3f} ms"
            ratio = "" if r.get("measured/predicted") is None else \
                f" (x{r['measured/predicted']:.2f})"
            if r.get("at_table_speed/predicted") is not None:  # a clock timed between rounds
                ratio += (f"; side by side with {r['clock']} x{r['at_table_speed/predicted']:.2f}"
                          f" (they ran {r['clock_during']:.2f}x their table times meanwhile)")
            drift = re.search(r"scaled by (\d+\.\d+)", r.get("predictor") or "")
            if r.get("tries"):  # timed again while the host ran off the prediction's speed
                aim = f"{drift.group(1)}x (the prediction's scaling)" if drift else \
                    "the table's speed"
                ratio += (f"; timed {len(r['tries'])} times, the clock at "
                          f"{', '.join(f'{d:.2f}x' for _, d in r['tries'])}: the try "
                          f"nearest {aim} kept")
            if (r.get("measured_in") or "").startswith("this process"):
                ratio += f"; timed in {r['measured_in']}, which runs models slower"
            if drift:  # the machine's speed moved since profiling (hwnas.probe)
                pred += f" (scaled by {drift.group(1)}: the calibration probes drifted)"
            chosen.rows.append([f"{r['device']} ({r.get('file')})", f"{pred}, {meas}{ratio}"])
        for device, m in self.predictor_metrics.items():
            text = (f"{m['within_10pct']:.0%} of {m['n']} subnets within ±10%, Kendall tau "
                    f"{m['kendall_tau']:.2f}")
            again = self.noise.get(device, {}).get("repeat_within_10pct")
            if again is not None:  # the held-out subnets timed twice: this host's ceiling
                text += (f" (the same subnets timed again: {again:.0%} within ±10% of their "
                         f"first timing)")
            chosen.rows.append([f"{device} predictor (held out)", text])
        for device, n in self.noise.items():
            text = (f"median spread (p90-p10)/median: ops {n['ops']:.2f}, subnets "
                    f"{n['subnets']:.2f}")
            if n["subnets"] > n["max_spread"]:  # most subnet rows noisy: the host was busy
                text += (f"; above max_spread {n['max_spread']:g}: the host was noisy while "
                         f"profiling, the figures above are less sure")
            chosen.rows.append([f"{device} timing noise", text])
        if self.verify:
            chosen.rows.append(["search, measured on the CPU",
                                f"{self.verify['measurements']} archs "
                                f"({self.verify['seconds']:.0f} s), the winner included"])
        chosen.rows.append(["time", ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())])
        return [chosen, Table("files", ["what", "where"], [[k, v] for k, v in self.files.items()])]


def _search_folder(out: Path, settings: dict[str, Any]) -> Path:
    """``out/search`` holding the search with these settings. A search with other settings
    (another budget, say) is moved aside to ``out/search-<its settings' hash>``, never
    deleted, and a kept one with these settings comes back to be resumed."""
    import hashlib

    def tag(cfg: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]

    run_dir, saved = out / "search", out / "search" / "config.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        if old == settings:
            return run_dir
        run_dir.rename(out / f"search-{tag(old)}")
    kept = out / f"search-{tag(settings)}"
    if kept.exists():
        kept.rename(run_dir)
    return run_dir


def _device(name: str, cfg: QuickstartConfig):
    from hwnas.devices import load_device

    dev = load_device(name)
    changes = {}
    if cfg.protocol_runs:
        changes["runs"] = cfg.protocol_runs
    if cfg.protocol_rounds:
        changes["rounds"] = cfg.protocol_rounds
    if changes:
        dev = dataclasses.replace(dev, protocol=dataclasses.replace(dev.protocol, **changes))
    return dev


def run(cfg: QuickstartConfig, console=None, progress: bool = True) -> QuickstartResult:
    """Run the chain into ``cfg.out``; returns what the closing table shows."""
    from rich.console import Console

    from hwnas.devices import check_usable

    console = console or Console()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dev, tfl = _device(cfg.device, cfg), _device(cfg.tflite_device, cfg)
    problem = check_usable(dev)
    if problem:
        raise QuickstartError(f"the quickstart needs {dev.name}: {problem}")
    tflite_problem = check_usable(tfl)
    secs: dict[str, float] = {}
    files: dict[str, str] = {}
    atomic_write_json(out / "quickstart.json", dataclasses.asdict(cfg), indent=2)

    # 1. profile (every device the quickstart measures on: ONNX Runtime, and TFLite here)
    devices = [dev] + ([tfl] if not tflite_problem else [])
    console.rule(f"1/5 profile {' and '.join(d.name for d in devices)} ({cfg.space} space)")
    t = time.perf_counter()
    from hwnas.profile import profile

    lut = out / "lut"
    measured, noise = {}, {}
    for d in devices:
        n = cfg.subnets if d is dev else cfg.tflite_subnets
        ops_res, sub_res = profile(d, cfg.space, subnets=n, seed=cfg.seed, out_dir=lut,
                                   progress=progress)  # models in lut/.cache/<device>
        measured[d.name] = sub_res.table
        noise[d.name] = {"ops": float(ops_res.table["spread"].median()),
                         "subnets": float(sub_res.table["spread"].median()),
                         "max_spread": d.protocol.max_spread}
        files.update({f"lut {d.name}": str(ops_res.path),
                      f"subnets {d.name}": str(sub_res.path)})
        console.print(f"{d.name}: {len(ops_res.table)} ops and {len(sub_res.table)} subnets "
                      f"measured ({ops_res.measured + sub_res.measured} now, the rest reused)")
        for note in ops_res.notes + sub_res.notes:
            console.print(f"note: {d.name}: {note}", style="yellow")
    secs["profile"] = time.perf_counter() - t

    # 2. predictors: the same kind for every device, judged on subnets it never saw
    console.rule("2/5 latency predictors")
    t = time.perf_counter()
    from hwnas.predictor import fit_for_device
    from hwnas.space import get_space

    space = get_space(cfg.space)

    reports = {}
    for d in devices:
        n_train = max(4, round(len(measured[d.name]) * 2 / 3))
        reports[d.name] = fit_for_device(d.name, "xgboost", space=cfg.space, n_train=n_train,
                                         seed=cfg.seed, lut_dir=lut)
        files.update({f"predictor {d.name}": reports[d.name].files["predictor"],
                      f"predictor plot {d.name}": reports[d.name].files["plot"]})
        m = reports[d.name].rows["xgboost"]
        noise[d.name].update(_timed_again(d, space, lut, reports[d.name].files["predictor"],
                                          progress))
        console.print(f"{d.name}: xgboost on {m['n']} held-out subnets: MAPE {m['mape']:.1%}, "
                      f"within ±10% {m['within_10pct']:.0%}, Kendall tau "
                      f"{m['kendall_tau']:.2f}; the same subnets timed again: "
                      f"{noise[d.name]['repeat_within_10pct']:.0%} within ±10% of their "
                      f"first timing")
    secs["predictor"] = time.perf_counter() - t

    # 3. train
    console.rule("3/5 supernet training (digits)")
    t = time.perf_counter()
    from hwnas.data import load_dataset
    from hwnas.train import TrainConfig, train

    train_set, _ = load_dataset("digits", max(space.resolutions), cfg.seed)
    # one folder per training length: a re-run with other --minutes trains anew
    tres = train(space, train_set, TrainConfig(epochs=cfg.train_epochs, seed=cfg.seed),
                 out / f"supernet-e{cfg.train_epochs}", progress=progress,
                 max_steps=cfg.train_max_steps)
    secs["train"] = time.perf_counter() - t
    files["checkpoint"] = str(tres.checkpoint)
    _plot_training(tres.history, out / "training.png")
    files["training_plot"] = str(out / "training.png")

    # 4. search
    console.rule("4/5 search")
    t = time.perf_counter()
    from hwnas.search import SearchConfig, search

    budget = cfg.budget_ms or default_budget(measured[dev.name])
    scfg = SearchConfig(space=cfg.space, objectives=("acc", f"latency:{dev.name}"),
                        budgets_ms=(round(budget, 4),), algorithm=cfg.algorithm,
                        evaluations=cfg.evaluations, pop_size=cfg.pop_size, seed=cfg.seed,
                        lut_dir=str(lut), checkpoint=str(tres.checkpoint), calib_batches=2,
                        verify_limit=20, allow_drift=True)
    run_dir = _search_folder(out, scfg.to_dict())
    sres = search(scfg, run_dir, resume=(run_dir / "config.json").exists(),
                  progress=progress)
    secs["search"] = time.perf_counter() - t
    if not sres.best:
        raise QuickstartError(f"the search found no arch under {budget:.3f} ms")
    best = next(iter(sres.best.values()))
    files.update(search=str(run_dir), front_plot=sres.files["front_png"],
                 hypervolume_plot=sres.files["hypervolume_png"])

    # 5. export + measure
    console.rule("5/5 export and measure")
    t = time.perf_counter()
    from hwnas.export import export

    formats = ["onnx"] + ([] if tflite_problem and "litert-torch" in tflite_problem
                          else ["tflite"])
    eres = export(run_dir / "best.json", out / "export", formats, space=space,
                  checkpoint=tres.checkpoint, devices=devices, lut_dir=lut, seed=cfg.seed,
                  progress=progress, allow_drift=True)
    secs["export"] = time.perf_counter() - t
    files["manifest"] = str(eres.manifest_path)
    for f in eres.manifest["files"]:
        files[f["variant"]] = str(out / "export" / f["file"])
    arch = json.loads(best["arch"])
    result = QuickstartResult(out, arch, best["name"], float(best["acc"]),
                              int(eres.manifest["macs"]), int(eres.manifest["params"]), budget,
                              eres.manifest["latency"],
                              {k: r.rows["xgboost"] for k, r in reports.items()}, files, secs,
                              dev.name, sres.verify, noise)
    if tflite_problem:
        result.latency.append({"device": tfl.name, "file": "-", "measured_ms": None,
                               "predicted_ms": None, "predictor": tflite_problem})
    write_report(result, reports, sres, eres.manifest, out / "report.html")
    files["report"] = str(out / "report.html")
    atomic_write_json(out / "result.json", dataclasses.asdict(result), indent=2, default=str)
    return result


def _timed_again(device, space, lut: Path, predictor_file: str, progress: bool
                 ) -> dict[str, float]:
    """The held-out subnets timed a second time, with the same protocol, against their
    first timing: how well two measurements of one network agree on this host now. A
    predictor judged against one timing cannot be expected to do much better; on a noisy
    host a predictor that held 97-100% elsewhere drew 37-57%."""
    import tempfile

    from hwnas.lut import read_table, table_paths
    from hwnas.predictor import metrics
    from hwnas.profile import Profiler, subnet_items

    held = json.loads(Path(predictor_file).read_text())["extra"]["heldout_keys"]
    first = read_table(table_paths(device.name, lut)[1], "subnets")[0].set_index("key").loc[held]
    archs = [space.arch(json.loads(a)) for a in first["arch"]]
    with tempfile.TemporaryDirectory(dir=lut) as tmp:
        profiler = Profiler(device, space, Path(tmp) / "again.parquet", "subnets",
                            lut / ".cache" / device.name, progress)
        profiler.calibrate = False  # a throw-away table: no probes to keep
        again = profiler.run(subnet_items(archs, space)).table.set_index("key").loc[held]
    m = metrics(again["latency_ms"], first["latency_ms"])
    return {"repeat_n": m["n"], "repeat_within_10pct": m["within_10pct"]}


def default_budget(subnets) -> float:
    """The middle of the measured subnets' latency range."""
    lat = subnets["latency_ms"].to_numpy(float)
    return float(lat.min() + 0.5 * (lat.max() - lat.min()))


def _plot_training(history, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.plot([h["epoch"] + 1 for h in history], [h["loss"] for h in history], "o-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("largest subnet's loss")
    ax.set_title("supernet training (sandwich rule, in-place distillation)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- report
def _img(path: str | Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">' \
           f'<figcaption>{html.escape(alt)}</figcaption></figure>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(res: QuickstartResult, predictor_reports, search_result, manifest,
                 path: Path) -> Path:
    """One static HTML file (images inlined, no scripts, no network). ``predictor_reports``:
    device -> its predictor report (held-out metrics of every kind)."""
    lat_rows = [[r["device"], r.get("file"), r.get("predicted_ms"), r.get("measured_ms"),
                 r.get("measured/predicted"), r.get("clock_during"),
                 r.get("at_table_speed/predicted"), r.get("predictor")] for r in res.latency]
    pred_rows = [[device, k, v["n"], v["mape"], v["within_5pct"], v["within_10pct"],
                  v["kendall_tau"]]
                 for device, report in predictor_reports.items() for k, v in report.rows.items()]
    plots = [_img(res.files[f"predictor plot {d}"], f"{d}: predicted vs measured latency, "
                                                    f"held-out subnets")
             for d in predictor_reports]
    verify = search_result.verify
    checked = "" if not verify else (
        f" {verify['measurements']} archs measured on {verify['device']} during the search "
        f"({verify['seconds']:.0f} s); the best per budget was measured before it was "
        f"reported.")
    checks = [[c["variant"], c["against"], c["max_abs_diff"], c["tolerance"], c["ok"]]
              for c in manifest["checks"]]
    filerows = [[f["variant"], f["file"], f["bytes"], f["sha256"]] for f in manifest["files"]]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>hwnas quickstart</title>",
        "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:4px 8px;font-size:14px}th{background:#f3f3f3}img{max-width:100%}"
        "figure{margin:1em 0}code{background:#f3f3f3;padding:1px 4px}</style></head><body>",
        "<h1>hwnas quickstart</h1>",
        f"<p>Chosen arch <code>{html.escape(res.name)}</code>: top-1 {res.accuracy:.2%} "
        f"(digits validation split, BN recalibrated), {res.macs / 1e6:.2f} MMACs, "
        f"{res.params / 1e6:.3f} M params, budget {res.budget_ms:.3f} ms.</p>",
        "<h2>Latency: predicted vs measured</h2>",
        "<p>A clock is timed between the measurement's rounds: the table's subnets nearest "
        "the prediction (else the calibration probes). <i>Clock during</i> is how much "
        "longer they ran than the table recorded, and the last ratio divides that out of "
        "each round: the winner measured side by side with them, in the prediction's own "
        "terms.</p>",
        _table(["device", "file", "predicted ms", "measured ms", "measured/predicted",
                "clock during", "at table speed/predicted", "predictor"], lat_rows),
        "<h2>1. Profile and 2. predictors</h2>",
        *[f"<p>{html.escape(d)}: median spread (p90-p10)/median of the timed calls: ops "
          f"{n['ops']:.2f}, subnets {n['subnets']:.2f} (rows above {n['max_spread']:g} were "
          f"timed again). Its held-out subnets timed a second time: "
          f"{n.get('repeat_within_10pct', float('nan')):.0%} within ±10% of their first "
          f"timing, near the most a predictor judged against one timing can show.</p>"
          for d, n in res.noise.items()],
        _table(["device", "predictor", "held-out n", "MAPE", "within ±5%", "within ±10%",
                "Kendall tau"], pred_rows),
        *plots,
        "<h2>3. Supernet training</h2>", _img(res.files["training_plot"], "training loss"),
        "<h2>4. Search</h2>",
        f"<p>{search_result.evaluations} accuracy evaluations, "
        f"{len(search_result.front)} archs on the Pareto front.{html.escape(checked)}</p>",
        _img(res.files["front_plot"], "accuracy vs predicted latency, front and budget"),
        _img(res.files["hypervolume_plot"], "hypervolume over the search"),
        "<h2>5. Export</h2>",
        _table(["variant", "checked against", "max abs diff", "tolerance", "ok"], checks),
        _table(["variant", "file", "bytes", "sha256"], filerows),
        "<h2>Files</h2>",
        _table(["what", "where"], [[k, v] for k, v in res.files.items()]),
        "<h2>Time per step (s)</h2>",
        _table(list(res.seconds), [[round(v, 1) for v in res.seconds.values()]]),
        "</body></html>"]
    return atomic_write_text(path, "\n".join(parts))


NEXT_STEPS = """\
Full size: ImageNet with Once-for-All's supernet (README, "ImageNet with Once-for-All's
supernet"): import OFA's weights, search on its ImageNet accuracy predictor under a budget
on this CPU, export the winner with those weights, evaluate it on your ImageNet folder.
  hwnas ofa import-supernet ofa_mbv3_d234_e346_k357_w1.2 --space default-w1.2 --out ofa-w1.2.pt
  hwnas profile --device cpu-onnxruntime --space default-w1.2 --subnets 200
  hwnas predictor fit --device cpu-onnxruntime
  hwnas search --space default-w1.2 --device cpu-onnxruntime --budget-ms 4 \\
      --accuracy ofa-predictor:acc_predictor.pth --evaluations 2000 --out runs/imagenet
  hwnas export --arch runs/imagenet --checkpoint ofa-w1.2.pt --format onnx,tflite \\
      --device cpu-onnxruntime --out export/imagenet
  hwnas evaluate --arch runs/imagenet --checkpoint ofa-w1.2.pt --data imagefolder:/data/imagenet
Other spaces (the presets table above, also 'hwnas space list'): every command takes
--space NAME of """ + ", ".join(PRESET_ORIGINS) + """."""


__all__ = ["QuickstartConfig", "QuickstartError", "QuickstartResult", "default_budget", "run",
           "write_report"]
