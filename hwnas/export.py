"""Export a searched subnet to ONNX, TFLite and TensorRT; check every file against PyTorch
(TensorRT against ONNX Runtime); measure it on devices; write one manifest.

Stages, in order, each named in errors and in the manifest: ``arch`` -> ``weights`` ->
``onnx export`` -> ``onnx check`` -> ``onnx verify`` -> ``tflite[-fp16|-int8] export`` ->
``... verify`` -> ``tensorrt[-fp16] build`` -> ``... verify`` -> ``measure <device>``.
Failure is loud: the stage's :class:`ExportError` propagates (the CLI exits 2), and the
files written so far stay, with ``manifest.json`` saying ``"status": "failed"`` and where.

Tolerances (max abs difference of the logits) are fixed per variant in :data:`TOLERANCE`:
1e-4 for ONNX fp32 and 1e-3 for TFLite fp32, each plus 1e-5 of the largest |logit| (fp32
rounding grows with magnitude: a trained net's logits of ~20 differed by 1.1e-4 between
PyTorch and ONNX Runtime); quantised variants are checked against a bound relative to the
logits' range, since fp16/int8 weights cannot match to 1e-3.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from hwnas.display import Table
from hwnas.display import progress as progress_bar
from hwnas.errors import ArchError, HwnasError, read_json
from hwnas.files import atomic_write, atomic_write_json, atomic_write_text, json_default
from hwnas.registry import Registry
from hwnas.space import Arch, SearchSpace, get_space

# variant -> (absolute tolerance, tolerance relative to the reference's max |logit|);
# None: reported, and only non-finite or mis-shaped outputs fail (dynamic-range int8 on an
# untrained net can differ by most of the logits' range; judge it by accuracy instead)
TOLERANCE: dict[str, tuple[float, float] | None] = {
    "onnx": (1e-4, 1e-5), "tflite": (1e-3, 1e-5), "tflite-fp16": (0.0, 0.1),
    "tflite-int8": None, "tensorrt": (1e-3, 0.01), "tensorrt-fp16": (0.0, 0.1)}


class ExportError(HwnasError):
    """A stage of an export failed; ``stage`` names it. Refused input (stage ``arch``)
    exits 2, failed work 1."""

    def __init__(self, stage: str, message: str, exit_code: int | None = None) -> None:
        super().__init__(f"export failed at stage '{stage}': {message}")
        self.stage = stage
        self.exit_code = exit_code if exit_code is not None else 2 if stage == "arch" else 1


class ExportIncomplete(ExportError):
    """A requested format or measurement could not be made on this machine, and was not
    allowed to be missing (``allow_missing``)."""

    def __init__(self, missing: Sequence[dict[str, Any]]) -> None:
        HwnasError.__init__(self, "export incomplete: " + "; ".join(
            f"{m['stage']}: {m['why']}" for m in missing) + " (allow the skip with "
            "--allow-missing " + " --allow-missing ".join(m["what"] for m in missing) + ")")
        self.stage, self.exit_code = missing[0]["stage"], 1


class MismatchError(ExportError):
    """An exported model's outputs differ from the reference by more than the tolerance."""


@dataclass
class ExportResult:
    """Where the export went and what its manifest says."""

    out_dir: Path
    manifest_path: Path
    manifest: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.manifest.get("status") == "ok"

    def tables(self) -> list[Table]:
        """Files, checks and (when measured) latency, as ``hwnas export`` prints them."""
        m = self.manifest
        files = Table(f"export of {m['name']}", ["variant", "file", "bytes", "sha256"],
                      [[f["variant"], f["file"], f"{f['bytes']:,}", f["sha256"][:16]]
                       for f in m["files"]])
        checks = Table("checks", ["variant", "against", "max abs diff", "tolerance", "ok"],
                       [[c["variant"], c["against"], f"{c['max_abs_diff']:.3g}",
                         "report only" if c["tolerance"] is None else f"{c['tolerance']:.2g}",
                         "yes" if c["ok"] else "NO"] for c in m["checks"]])
        out = [files, checks]
        if m["latency"]:
            def num(v, fmt=".3f"):
                return "-" if v is None else f"{v:{fmt}}"

            out.append(Table("latency", ["device", "file", "predicted ms", "measured ms",
                                         "measured/predicted", "clock during",
                                         "at table speed/predicted"], [
                [r["device"], r["file"], num(r["predicted_ms"]), num(r["measured_ms"]),
                 num(r["measured/predicted"]), num(r.get("clock_during"), ".2f"),
                 num(r.get("at_table_speed/predicted"))]
                for r in m["latency"]]))
        return out

    def notes(self) -> list[str]:
        return [f"skipped {s['stage']}: {s['why']}" for s in self.manifest["skipped"]] + \
            [f"{r['device']} was timed in {r['measured_in']}: a process that has trained "
             f"or searched runs models slower than the one that timed the tables"
             for r in self.manifest["latency"]
             if (r.get("measured_in") or "").startswith("this process")] + \
            [f"manifest: {self.manifest_path}"]


# ------------------------------------------------------------------------ inputs
def read_arch(source: str | Path | dict | Arch, space: SearchSpace) -> Arch:
    """An arch from an :class:`Arch`, a dict (hwnas or OFA keys), a JSON file holding one
    (or ``{"arch": ...}`` as in ``pareto.json``, or a one-entry list), or a search run
    folder (its ``best.json``)."""
    if isinstance(source, Arch):
        return space.arch(source)
    if isinstance(source, dict):
        return space.arch(source.get("arch", source))
    path = Path(source)
    if path.is_dir():
        if not (path / "best.json").exists():
            raise ArchError(f"{path} is a folder without best.json; pass an arch JSON file "
                            f"or a search run folder")
        path = path / "best.json"
    return space.load_arch(path)


def space_for(source: Any, checkpoint: str | Path | None, space: str | None) -> SearchSpace:
    """The space to read ``source`` in: given, else the checkpoint's, else the search
    run's (``config.json`` next to the arch), else the default."""
    if space:
        return get_space(space)
    if checkpoint:
        from hwnas.train import load_checkpoint

        return SearchSpace.from_dict(load_checkpoint(checkpoint)["space"])
    if isinstance(source, (str, Path)):
        path = Path(source)
        config = (path if path.is_dir() else path.parent) / "config.json"
        if config.exists():
            cfg = read_json(config, ArchError, "search config")
            if isinstance(cfg, dict) and isinstance(cfg.get("space"), str):
                return get_space(cfg["space"])
    return get_space("default")


def build_subnet(arch: Arch, space: SearchSpace, checkpoint: str | Path | None = None,
                 seed: int = 0) -> nn.Module:
    """The static subnet: with a checkpoint's weights, else freshly initialised (seeded)
    with batch-norm statistics estimated on images, so activations keep their scale
    through the depth and the outputs depend on the input (without that, an untrained
    net's logits are constant and a conversion check would prove nothing)."""
    from hwnas.supernet import Supernet
    from hwnas.train import load_supernet

    if checkpoint:
        return load_supernet(checkpoint, space).subnet(arch).eval()
    from hwnas.evaluate import recalibrate_bn

    torch.manual_seed(seed)
    net = Supernet(space).subnet(arch)
    x = torch.cat([torch.from_numpy(v) for _, v in verification_inputs(
        arch, space, seed + 1, n_random=16, n_real=48)])
    return recalibrate_bn(net, [x]).eval()


def verification_inputs(arch: Arch, space: SearchSpace, seed: int = 0, n_random: int = 2,
                        n_real: int = 2) -> list[tuple[str, np.ndarray]]:
    """Batch-1 NCHW inputs: seeded random ones, and real images (the embedded data set
    resized to the arch's resolution) when the space takes 3-channel images."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, space.in_channels, arch.r, arch.r)
    out = [(f"random{i}", torch.randn(shape, generator=g).numpy()) for i in range(n_random)]
    if n_real and space.in_channels == 3:
        from hwnas.data import digits, resize

        _, val = digits(arch.r, seed=seed)
        x = resize(val.images[:n_real], arch.r)
        out += [(f"real{i}", x[i:i + 1].numpy()) for i in range(len(x))]
    return out


def compare(variant: str, run: Callable[[np.ndarray], np.ndarray],
            reference: Callable[[np.ndarray], np.ndarray],
            inputs: Sequence[tuple[str, np.ndarray]], stage: str) -> dict[str, Any]:
    """Max abs difference of ``run`` against ``reference`` over ``inputs``; raises
    :class:`MismatchError` naming the worst input when over the variant's tolerance."""
    bound = TOLERANCE[variant]
    worst, worst_input, scale = 0.0, None, 0.0
    for label, x in inputs:
        ref = np.asarray(reference(x), dtype=np.float64)
        got = np.asarray(run(x), dtype=np.float64)
        if got.shape != ref.shape:
            raise MismatchError(stage, f"output shape {got.shape} differs from the "
                                       f"reference's {ref.shape} (input {label})")
        if not np.all(np.isfinite(got)):
            raise MismatchError(stage, f"non-finite outputs on input {label}")
        diff = float(np.max(np.abs(got - ref)))
        scale = max(scale, float(np.max(np.abs(ref))))
        if diff > worst or worst_input is None:
            worst, worst_input = diff, label
    tol = None if bound is None else bound[0] + bound[1] * scale
    check = {"variant": variant, "inputs": [label for label, _ in inputs],
             "max_abs_diff": worst, "relative_diff": worst / scale if scale else None,
             "tolerance": tol, "worst_input": worst_input,
             "ok": bool(tol is None or worst <= tol)}
    if not check["ok"]:
        raise MismatchError(stage, f"max abs difference {worst:.3g} on input {worst_input} "
                                   f"exceeds the tolerance {tol:.3g} for {variant}")
    return check


def _torch_ref(module: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    @torch.no_grad()
    def ref(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(x)).numpy()

    return ref


def file_record(path: Path, fmt: str, variant: str) -> dict[str, Any]:
    data = path.read_bytes()
    return {"format": fmt, "variant": variant, "file": path.name, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


# ------------------------------------------------------------------------- stages
def onnx_file(module: nn.Module, sample: torch.Tensor, path: Path, dynamic_batch: bool,
              simplify: bool = True) -> dict[str, Any]:
    """Export, simplify with onnxslim where installed (the exporter already folds
    batch norm and constants, so on these nets it mostly confirms that), and check."""
    import onnx

    from hwnas.convert import to_onnx

    try:
        to_onnx(module, sample, path, dynamic_batch=dynamic_batch)
    except HwnasError as exc:
        raise ExportError("onnx export", str(exc)) from None
    model = onnx.load(str(path))
    info: dict[str, Any] = {"opset": _opset(model), "dynamic_batch": dynamic_batch,
                            "nodes_exported": len(model.graph.node), "simplified_by": None}
    if simplify:
        try:
            import onnxslim
        except ImportError:
            info["simplified_by"] = "not simplified: onnxslim is not installed " \
                                    "(pip install 'hwnas[onnx-tools]')"
        else:
            try:
                slim = onnxslim.slim(model)
            except Exception as exc:
                raise ExportError("onnx export", f"onnxslim failed on {path.name}: {exc}"
                                  ) from None
            if len(slim.graph.node) < len(model.graph.node):
                model = slim
                onnx.save(model, str(path))
            info["simplified_by"] = f"onnxslim {getattr(onnxslim, '__version__', '')}".strip()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ExportError("onnx check", f"{path.name} fails onnx.checker: {exc}") from None
    info["nodes"] = len(model.graph.node)
    info["ops"] = sorted({n.op_type for n in model.graph.node})
    return info


def _opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x.astype(np.float32)})[0]

    return run


def tflite_runner(path: Path, shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    from hwnas.backends.tflite import interpreter_runner, nhwc_np

    runner = interpreter_runner(path, nhwc_np(np.zeros(shape, np.float32)), threads=1)
    return runner.infer


# --------------------------------------------------------------------------- main
class _Manifest:
    """The manifest, rewritten after every stage so a failure leaves it describing what
    was done."""

    def __init__(self, path: Path, head: dict[str, Any]) -> None:
        self.path, self.doc = path, {**head, "status": "running", "stage": None,
                                     "files": [], "checks": [], "latency": [], "skipped": []}

    def stage(self, name: str) -> None:
        self.doc["stage"] = name
        self.write()

    def write(self) -> None:
        atomic_write_json(self.path, self.doc, indent=2, default=json_default)


@dataclass
class ExportJob:
    """One export in progress: what its stages share and add to."""

    arch: Arch
    space: SearchSpace
    module: nn.Module
    reference: Callable[[np.ndarray], np.ndarray]
    inputs: list[tuple[str, np.ndarray]]
    out: Path
    manifest: "_Manifest"
    fp16: bool = False
    int8: bool = False
    dynamic_batch: bool = False
    simplify: bool = True
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return (1, self.space.in_channels, self.arch.r, self.arch.r)

    @property
    def sample(self) -> torch.Tensor:
        return torch.from_numpy(self.inputs[0][1])


@dataclass(frozen=True)
class ExportFormat:
    """How one format is produced: ``run(job)`` writes and verifies its file(s);
    ``needs``: formats it is made from; ``variants(job)``: the files it makes."""

    run: Callable[[ExportJob], None]
    needs: tuple[str, ...] = ()
    variants: Callable[[ExportJob], list[str]] = lambda job: [""]


# Export formats by name, in the order they are produced.
FORMATS: Registry = Registry("export format", lambda m: ExportError("arch", m))


def export(arch: Arch | dict | str | Path, out_dir: str | Path,
           formats: Sequence[str] = ("onnx", "tflite"), space: str | SearchSpace | None = None,
           checkpoint: str | Path | None = None, devices: Sequence[str] = (),
           fp16: bool = False, int8: bool = False, dynamic_batch: bool = False,
           simplify: bool = True, lut_dir: str | Path = "lut", measure: bool = True,
           seed: int = 0, progress: bool = True,
           allow_missing: Sequence[str] = (), allow_drift: bool = False) -> ExportResult:
    """Export ``arch`` in ``formats`` into ``out_dir``, verify each file, and measure the
    matching file on each of ``devices``; returns the manifest (also ``manifest.json``).

    A requested format or device this machine cannot produce or run (TensorRT without a
    GPU, say) is skipped and recorded, and then the export is *incomplete*: the manifest
    says ``"status": "incomplete"`` and :class:`ExportIncomplete` is raised, unless its name
    is in ``allow_missing``. Any failure leaves the manifest ``"failed"`` with its stage."""
    formats = _check_formats(formats)
    sp = space if isinstance(space, SearchSpace) else space_for(arch, checkpoint, space)
    a = read_arch(arch, sp)
    from hwnas.devices import check_usable, load_device

    devs = [load_device(d) for d in devices]
    for d in devs:  # bad input is refused before any work
        fmt = _device_format(d)
        if fmt is not None and fmt not in formats:
            raise ExportError("arch", f"device {d.name} runs {fmt} files; add {fmt} to the "
                                      f"formats ({', '.join(formats)}) to measure it there")
        if d.batch != 1 and fmt in ("onnx", "tensorrt") and not dynamic_batch:
            raise ExportError("arch", f"device {d.name} runs batch {d.batch}, and the exported "
                                      f"{fmt} file takes batch 1; pass --dynamic-batch to "
                                      f"measure it there")
        if d.batch != 1 and d.backend == "adb-tflite":
            raise ExportError("arch", f"device {d.name} runs batch {d.batch}; the exported "
                                      f"TFLite file is measured on a phone at batch 1 only")
        if measure and check_usable(d) is None:  # stale tables are refused before any work
            predict_latency(d.name, a, sp, lut_dir, allow_drift)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from hwnas.ops import count

    c = count(a, sp)
    man = _Manifest(out / "manifest.json", {
        "format": "hwnas-export", "format_version": 1, "arch": a.to_dict(),
        "name": sp.arch_name(a), "space": sp.name, "space_id": sp.id, "macs": c.macs,
        "params": c.params, "input_shape": [1, sp.in_channels, a.r, a.r],
        "input_layout": {"onnx": "NCHW", "tflite": "NHWC", "tensorrt": "NCHW"},
        "weights": str(checkpoint) if checkpoint else f"random init (seed {seed})",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    atomic_write_text(out / "arch.json", a.to_json() + "\n")
    try:
        man.stage("weights")
        module = build_subnet(a, sp, checkpoint, seed)
        job = ExportJob(a, sp, module, _torch_ref(module), verification_inputs(a, sp, seed),
                        out, man, fp16, int8, dynamic_batch, simplify)
        run = [f for f in FORMATS if f in formats
               or any(f in FORMATS.get(g).needs for g in formats)]
        steps = sum(len(FORMATS.get(f).variants(job)) for f in run) + len(devs)
        with progress_bar(progress) as bar:
            task = bar.add_task("export", total=steps)
            for f in run:
                bar.update(task, description=f"export {f}")
                FORMATS.get(f).run(job)
                bar.advance(task, len(FORMATS.get(f).variants(job)))
            for d in devs:
                bar.update(task, description=f"measure {d.name}")
                problem = check_usable(d)
                if problem:
                    man.doc["skipped"].append({"stage": f"measure {d.name}", "why": problem,
                                               "what": d.name})
                elif measure:
                    man.stage(f"measure {d.name}")
                    man.doc["latency"].append(_measure(d, job, lut_dir, allow_drift))
                bar.advance(task)
    except ExportError as exc:
        man.doc.update(status="failed", error=str(exc), failed_stage=exc.stage)
        man.write()
        raise
    except HwnasError as exc:
        stage = man.doc["stage"] or "arch"
        man.doc.update(status="failed", error=str(exc), failed_stage=stage)
        man.write()
        raise ExportError(stage, str(exc), exc.exit_code) from None  # bad input stays 2
    except BaseException as exc:  # a bug, or Ctrl-C: recorded, then raised as it is
        man.doc.update(status="failed", failed_stage=man.doc["stage"] or "arch",
                       error=f"{type(exc).__name__}: {exc}")
        man.write()
        raise
    missing = [s for s in man.doc["skipped"] if s["what"] not in set(allow_missing)]
    for s in man.doc["skipped"]:
        s["allowed"] = s["what"] in set(allow_missing)
    man.doc.update(status="incomplete" if missing else "ok", stage="done")
    man.write()
    if missing:
        raise ExportIncomplete(missing)
    return ExportResult(out, man.path, man.doc, job.files)


def _check_formats(formats: Sequence[str] | str) -> list[str]:
    items = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    items = [f for f in items if f]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ExportError("arch", f"unknown format(s) {bad or items}; allowed: "
                                  f"{', '.join(FORMATS.choices())}")
    return items


def _device_format(device) -> str | None:
    from hwnas.backends import get_backend_class

    return get_backend_class(device.backend).file_format


def export_onnx(job: ExportJob) -> None:
    """``model.onnx``: exported, simplified, checked, compared with PyTorch."""
    man, path = job.manifest, job.out / "model.onnx"
    man.stage("onnx export")
    t = time.perf_counter()
    info = onnx_file(job.module, job.sample, path, job.dynamic_batch, job.simplify)
    job.files["onnx"] = path
    man.doc["files"].append({**file_record(path, "onnx", "onnx"), **info,
                             "export_s": time.perf_counter() - t})
    man.stage("onnx verify")
    run = onnx_runner(path)
    man.doc["checks"].append({"format": "onnx", "against": "pytorch",
                              **compare("onnx", run, job.reference, job.inputs, "onnx verify")})
    if job.dynamic_batch:  # one batch of every input at once
        batch = np.concatenate([x for _, x in job.inputs])
        man.doc["checks"].append({"format": "onnx", "against": "pytorch", **compare(
            "onnx", run, job.reference, [("batch", batch)], "onnx verify")})


def _tflite_variants(job: ExportJob) -> list[str]:
    return ["tflite"] + ["tflite-fp16"] * job.fp16 + ["tflite-int8"] * job.int8


def export_tflite(job: ExportJob) -> None:
    """``model.tflite`` (and fp16 / int8 variants), each compared with PyTorch."""
    from hwnas.convert import to_tflite

    man = job.manifest
    for variant in _tflite_variants(job):
        quant = {"tflite": None, "tflite-fp16": "fp16", "tflite-int8": "int8-dynamic"}[variant]
        path = job.out / ("model.tflite" if quant is None
                          else f"model-{variant.split('-')[1]}.tflite")
        man.stage(f"{variant} export")
        t = time.perf_counter()
        try:
            to_tflite(job.module, job.sample, path, quantize=quant)
        except HwnasError as exc:
            raise ExportError(f"{variant} export", str(exc)) from None
        job.files[variant] = path
        man.doc["files"].append({**file_record(path, "tflite", variant),
                                 "export_s": time.perf_counter() - t})
        man.stage(f"{variant} verify")
        run = tflite_runner(path, job.shape)
        man.doc["checks"].append({"format": "tflite", "against": "pytorch", **compare(
            variant, run, job.reference, job.inputs, f"{variant} verify")})


def export_tensorrt(job: ExportJob) -> None:
    """TensorRT engines built from ``model.onnx``, compared with ONNX Runtime (skipped,
    saying why, where TensorRT or CUDA is missing)."""
    import dataclasses

    from hwnas.backends.tensorrt import TensorRTBackend
    from hwnas.devices import load_device

    man, onnx_path, shape, out, fp16 = (job.manifest, job.files["onnx"], job.shape, job.out,
                                        job.fp16)
    inputs, files = job.inputs, job.files
    base = load_device("cuda-tensorrt")
    problem = TensorRTBackend.check(base)
    if problem:
        man.doc["skipped"].append({"stage": "tensorrt build", "why": problem,
                                   "what": "tensorrt"})
        man.write()
        return
    ort_run = onnx_runner(onnx_path)
    for variant, precision in [("tensorrt", "fp32")] + [("tensorrt-fp16", "fp16")] * fp16:
        man.stage(f"{variant} build")
        dev = dataclasses.replace(base, precision=precision)
        backend = TensorRTBackend(dev, cache_dir=out / ".trt-cache")
        key = f"{file_record(onnx_path, 'onnx', 'onnx')['sha256']}|{precision}"
        path = out / ("model.engine" if precision == "fp32" else "model-fp16.engine")
        try:
            engine = backend.build_engine(onnx_path, shape, key)
            atomic_write(path, lambda tmp: tmp.write_bytes(engine))
            runner = backend.load(path, shape)  # the exported file, as a device will run it
        except HwnasError as exc:
            raise ExportError(f"{variant} build", str(exc)) from None
        files[variant] = path
        man.doc["files"].append(file_record(path, "tensorrt", variant))
        man.stage(f"{variant} verify")
        man.doc["checks"].append({"format": "tensorrt", "against": "onnxruntime", **compare(
            variant, runner.infer, ort_run, inputs, f"{variant} verify")})
        man.doc["files"][-1]["layer_times"] = runner.info["layer_times"]()[:20]
        runner.close()


FORMATS.register("onnx", ExportFormat(export_onnx))
FORMATS.register("tflite", ExportFormat(export_tflite, variants=_tflite_variants))
FORMATS.register("tensorrt", ExportFormat(export_tensorrt, needs=("onnx",)))


def _measure(device, job: ExportJob, lut_dir, allow_drift: bool = False) -> dict[str, Any]:
    """Time the exported file the device runs (the module itself on torch devices) with
    the profiling protocol, next to the device's predicted latency. A *clock* is timed
    between the rounds (``time_runner``): the device table's subnets nearest the
    prediction (``ReferenceClock``), else its calibration probes (``ProbeClock``). The row
    then also says how much slower than the table the clock ran meanwhile and what the
    file measures at the table's speed: measured side by side, in the prediction's own
    terms, which a shared host's slow phases do not move. Timed in a new process, as the
    tables were (:func:`hwnas.profile.in_fresh_process`)."""
    from hwnas.probe import time_beside_table
    from hwnas.profile import in_fresh_process

    arch, space, files = job.arch, job.space, job.files
    fmt = _device_format(device)
    variant = f"{fmt}-fp16" if fmt and device.precision == "fp16" and f"{fmt}-fp16" in files \
        else fmt
    predicted, how, scale = predict_latency(device.name, arch, space, lut_dir, allow_drift)
    model = files[variant] if fmt else job.module
    try:
        stats, where = in_fresh_process(
            time_beside_table, device, model, device.input_shape(job.shape), arch.key, arch,
            space, Path(lut_dir), predicted and predicted / scale,
            job.out / ".cache" / device.name, scale)
    except HwnasError as exc:
        raise ExportError(f"measure {device.name}", str(exc)) from None
    row = {"device": device.name, "file": files[variant].name if fmt else "(pytorch module)",
           "measured_ms": stats["latency_ms"], "spread": stats["spread"],
           "count": stats["count"], "statistic": stats["statistic"],
           "predicted_ms": predicted, "predictor": how, "measured_in": where}
    row["measured/predicted"] = stats["latency_ms"] / predicted if predicted else None
    if "drift" in stats:
        row["clock"] = stats["clock"]
        row["clock_during"] = stats["drift"]
        row["at_table_speed_ms"] = stats["at_table_speed_ms"]
        # the prediction before any --allow-drift scaling is in the table's terms
        row["at_table_speed/predicted"] = \
            stats["at_table_speed_ms"] / (predicted / scale) if predicted else None
    if "tries" in stats:  # timed again: the clock ran >10% off the table's speed
        row["tries"] = stats["tries"]
    return row


def predict_latency(device: str, arch: Arch, space: SearchSpace, lut_dir: str | Path,
                    allow_drift: bool = False) -> tuple[float | None, str, float]:
    """The device's saved predictor's estimate, else its LUT sum, else (None, why), and
    the factor it was scaled by for a drift of the machine (1.0 if none). A drift of its
    tables' calibration probes (``hwnas.probe``) is an error here too."""
    from hwnas.predictor import PredictorError, device_predictor
    from hwnas.probe import DriftError, drift_scale

    try:
        pred, how = device_predictor(device, space, lut_dir, lut_sum_fallback=True,
                                     allow_drift=allow_drift)
        return float(np.asarray(pred.predict([arch]))[0]), how, drift_scale(pred)
    except DriftError:
        raise
    except (PredictorError, HwnasError) as exc:
        return None, f"no prediction: {exc}", 1.0


__all__ = ["ExportError", "ExportIncomplete", "ExportResult", "FORMATS", "MismatchError",
           "TOLERANCE", "compare", "export", "read_arch", "verification_inputs"]
