"""The ``hwnas`` command: a thin layer over the Python API.

Every command takes ``--space`` the same way. Deliberate errors (:class:`HwnasError`)
print one line naming the problem, never a traceback. Exit status: 0 done; 1 the work
failed or is incomplete (a runtime error, a failed check, a requested result not
produced); 2 bad usage or bad input (a wrong flag, value or file: nothing was done).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hwnas.errors import HwnasError
from hwnas.space import SPACES, get_space

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Hardware-aware NAS: profile a device, model latency, search, export.")
space_app = typer.Typer(no_args_is_help=True, help="Sample, inspect and count archs.")
app.add_typer(space_app, name="space")

console = Console(width=None if sys.stdout.isatty() else 160)
# Options chosen from a registry; ``command()`` replaces these with Literal types of the
# registries' names when it builds the command (typer reads annotations only then).
Algorithm = str
PredictorKind = str
Verify = str
SPACE_HELP = (f"search space preset: {', '.join(SPACES)}; NAME@RESOLUTIONS for other "
              f"input sizes, e.g. default-w1.2@128-224:4")


@app.callback()
def _root() -> None:
    """hwnas command line."""


@app.command("version")
def version() -> None:
    """Print the hwnas version."""
    from hwnas import __version__

    console.print(__version__)


@space_app.command("sample")
def space_sample(
    space: str = typer.Option("default", help=SPACE_HELP),
    n: int = typer.Option(1, "--n", min=1, help="how many archs"),
    seed: int = typer.Option(0, help="random seed"),
    out: Optional[Path] = typer.Option(None, help="write JSON here instead of stdout"),
) -> None:
    """Draw random archs; writes one JSON object (n=1) or a list."""
    from hwnas.files import atomic_write_text

    archs = [a.to_dict() for a in get_space(space).sample(n, seed=seed)]
    text = json.dumps(archs[0] if n == 1 else archs, indent=None)
    if out is None:
        print(text)
    else:
        atomic_write_text(out, text + "\n")
        console.print(f"wrote {n} arch(s) to {out}", style="green")

@space_app.command("show")
def space_show(
    arch: Path = typer.Argument(..., help="arch JSON file (an object, or a list of them)"),
    space: str = typer.Option("default", help=SPACE_HELP),
) -> None:
    """Print an arch's name, resolution, MACs, params and its ops."""
    from hwnas import encoding
    from hwnas.ops import describe

    sp = get_space(space)
    for a in encoding.load_many(sp, arch):
        _show(describe(a, sp))

@space_app.command("list")
def space_list() -> None:
    """Every space preset: its size (networks, unique ops), MACs, params and origin."""
    from hwnas.ops import describe_presets

    _show(describe_presets())

@space_app.command("info")
def space_info(space: str = typer.Option("default", help=SPACE_HELP)) -> None:
    """Print the space's parameters, its size and its number of unique ops."""
    from hwnas.ops import describe_space

    sp = get_space(space)
    console.print_json(json.dumps(sp.to_dict()))
    for line in describe_space(sp):
        console.print(line)

@app.command("devices")
def devices_cmd(
    files: Optional[list[Path]] = typer.Argument(None, help="device files to validate "
                                                 "(default: every file in devices/)"),
) -> None:
    """List device files, validate them, and say which are usable on this machine and,
    for each that is not, what is missing."""
    from hwnas.devices import devices_table

    table, bad = devices_table(files)
    _show(table)
    if bad:
        raise typer.Exit(2)

@app.command("profile")
def profile_cmd(
    device: str = typer.Option(..., help="device file or name in devices/"),
    space: str = typer.Option("default", help=SPACE_HELP),
    resolutions: Optional[str] = typer.Option(None, help="comma-separated subset, e.g. "
                                              "160,224 (default: all of the space)"),
    subnets: int = typer.Option(0, min=0, help="also time N sampled subnets end to end "
                                "(smallest and largest always included)"),
    seed: int = typer.Option(0, help="seed for sampling subnets"),
    sampling: Optional[str] = typer.Option(None, help="how subnets are drawn: mixed (half "
                                           "uniform, half spread from the smallest to the "
                                           "largest net), uniform (OFA's) or spread "
                                           "(default: what the table records, else mixed)"),
    out: Path = typer.Option(Path("lut"), help="folder for the tables"),
    cache: Optional[Path] = typer.Option(None, help="folder for converted models "
                                         "(default <out>/.cache/<device>)"),
    batch: Optional[int] = typer.Option(None, min=1, help="images per inference instead of "
                                        "the device file's (tables: <device>-b<N>)"),
    allow_drift: bool = typer.Option(False, help="resume a table although this machine now "
                                     "runs its calibration probes at another speed (the "
                                     "table records the mix)"),
) -> None:
    """Measure every unique op of the space on a device (and optionally sampled subnets).
    Resumes where an interrupted run stopped."""
    from hwnas.profile import profile

    res = _int_list(resolutions, "--resolutions") if resolutions else None
    ops_res, sub_res = profile(device, space, res, subnets, seed, out, cache, batch=batch,
                               allow_drift=allow_drift, sampling=sampling)
    for label, r in (("ops", ops_res), ("subnets", sub_res)):
        if r is not None:
            console.print(r.summary(label))
            for note in r.notes:
                console.print(f"note: {note}", style="yellow")

@app.command("restate")
def restate_cmd(
    device: str = typer.Option(..., help="device name (reads lut/<device>.parquet and "
                               ".subnets.parquet)"),
    lut: Path = typer.Option(Path("lut"), help="folder with the tables"),
    statistic: Optional[str] = typer.Option(None, help="the statistic the tables should "
                                            "hold (default: what the device's protocol "
                                            "measures now; only median -> p10 is possible)"),
) -> None:
    """Rewrite a device's tables of medians as the p10 of the same timed calls, which every
    row also records, for a device file that now measures the p10. Its predictor must
    then be fitted again ('hwnas predictor fit')."""
    from hwnas.devices import load_device
    from hwnas.errors import LutError
    from hwnas.lut import restate, table_paths

    want = statistic or load_device(device).protocol.statistic
    paths = [(p, k) for p, k in zip(table_paths(device, lut), ("ops", "subnets")) if p.exists()]
    if not paths:
        raise LutError(f"no tables of {device} in {lut} (looked for {device}.parquet and "
                       f"{device}.subnets.parquet)")
    for path, kind in paths:
        done = restate(path, kind, want)
        console.print(f"{path}: {'now holds' if done else 'already held'} the {want} of its "
                      f"timed calls")


predictor_app = typer.Typer(no_args_is_help=True,
                            help="Fit, evaluate and transfer latency predictors.")
app.add_typer(predictor_app, name="predictor")


@predictor_app.command("fit")
def predictor_fit(
    device: str = typer.Option(..., help="device name (reads lut/<device>.parquet and "
                               ".subnets.parquet)"),
    space: Optional[str] = typer.Option(None, help=SPACE_HELP + " (default: the LUT's)"),
    kind: PredictorKind = typer.Option("xgboost", help="the predictor to fit and save"),
    train: int = typer.Option(200, min=1, help="measured subnets used for fitting; the rest "
                              "are held out and never seen"),
    k: Optional[int] = typer.Option(None, min=1, help="few-shot: fit on only K measured "
                                    "subnets (kind fewshot; structural features, plus the "
                                    "LUT and --prior devices' predictors where given)"),
    use_lut: bool = typer.Option(True, help="few-shot: use the device's LUT when it has one"),
    prior: list[str] = typer.Option([], help="few-shot: another device whose saved predictor "
                                    "is extra evidence (repeatable)"),
    seed: int = typer.Option(0, help="seed of the train/held-out split and the models"),
    lut: Path = typer.Option(Path("lut"), help="folder with the tables"),
    out: Optional[Path] = typer.Option(None, help="predictor file (default "
                                       "lut/<device>.predictor.json)"),
) -> None:
    """Fit a latency predictor on measured subnets and report it on the held-out ones."""
    from hwnas import fewshot, predictor as api

    if k is not None or kind == "fewshot":
        _show_report(fewshot.fit_few_shot(device, k or 20, seed, lut, out, use_lut, prior,
                                          space))
        return
    _show_report(api.fit_for_device(device, kind=kind, space=space, n_train=train, seed=seed,
                                    lut_dir=lut, out=out))

@predictor_app.command("eval")
def predictor_eval(
    device: str = typer.Option(..., help="device name"),
    predictor: Optional[Path] = typer.Option(None, help="predictor file (default "
                                             "lut/<device>.predictor.json)"),
    lut: Path = typer.Option(Path("lut"), help="folder with the tables"),
    allow_mismatch: bool = typer.Option(False, help="use a predictor fitted for another "
                                        "space or device fingerprint"),
) -> None:
    """Evaluate a saved predictor on held-out measured subnets (never used in fitting)."""
    from hwnas import predictor as api

    _show_report(api.evaluate_for_device(device, predictor, lut_dir=lut,
                                         allow_mismatch=allow_mismatch))

@predictor_app.command("transfer")
def predictor_transfer(
    source: str = typer.Option(..., "--from", help="device whose fitted xgboost predictor "
                               "is the prior"),
    device: str = typer.Option(..., help="the new device (its LUT and a few measured "
                               "subnets)"),
    k: int = typer.Option(20, min=2, help="measured subnets of the new device to use"),
    seed: int = typer.Option(0),
    lut: Path = typer.Option(Path("lut"), help="folder with the tables"),
    out: Optional[Path] = typer.Option(None, help="predictor file (default "
                                       "lut/<device>.predictor.json)"),
) -> None:
    """Few-shot transfer of a fitted predictor to a new device from k measured subnets."""
    from hwnas import predictor as api

    _show_report(api.transfer_to_device(source, device, k=k, seed=seed, lut_dir=lut, out=out))

@app.command("train")
def train_cmd(
    space: str = typer.Option("small", help=SPACE_HELP),
    data: str = typer.Option("digits", help="digits (embedded), digits-hard, imagefolder:PATH, "
                             "cifar10:PATH or cifar100:PATH"),
    out: Path = typer.Option(Path("runs/supernet"), help="checkpoint folder (last.pt); an "
                             "existing one is resumed"),
    epochs: int = typer.Option(30, min=1),
    batch_size: int = typer.Option(64, min=1),
    lr: float = typer.Option(0.05),
    label_smoothing: float = typer.Option(0.1),
    n_random: int = typer.Option(2, min=0, help="random subnets per step (sandwich rule)"),
    distill: bool = typer.Option(True, help="in-place distillation from the largest subnet"),
    progressive: bool = typer.Option(False, help="OFA progressive shrinking"),
    smallest_resolution: str = typer.Option("random", help="the smallest subnet's "
                                            "resolution each step: random (drawn per step) "
                                            "or min (BigNAS)"),
    augment: bool = typer.Option(True, help="distort training batches with the data set's "
                                 "augmentation (shift/flip; digits-hard: its distortion)"),
    method: str = typer.Option("sandwich", help="training method: sandwich (BigNAS), fairnas, "
                               "attentive (AttentiveNAS), pinas (Pi-NAS) or dna (DNA)"),
    teacher: Optional[Path] = typer.Option(None, help="dna: supernet checkpoint whose "
                                           "largest subnet teaches"),
    candidates: int = typer.Option(3, min=1, help="attentive: archs rated per random subnet"),
    pareto: str = typer.Option("best", help="attentive: train the best or worst of them"),
    pareto_rating: str = typer.Option("loss", help="attentive: rate candidates by their "
                                      "batch loss, or acc-table:PATH (an accuracy predictor "
                                      "fitted on measured accuracies)"),
    pareto_cost: str = typer.Option("macs", help="attentive: cost levels by macs, or "
                                    "latency:DEVICE (that device's latency predictor)"),
    lut: Path = typer.Option(Path("lut"), help="attentive: folder of latency:DEVICE's "
                             "predictor"),
    ema_decay: float = typer.Option(0.99, help="pinas: mean teacher decay per step"),
    consistency: float = typer.Option(1.0, help="pinas: weight of the cross-path loss"),
    shadow_bn: bool = typer.Option(True, help="multi-path spaces (mixpath): one depthwise BN "
                                   "per number of active paths (MixPath's shadow BN)"),
    seed: int = typer.Option(0),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
) -> None:
    """Train a supernet (by default the sandwich rule with in-place distillation); runs
    under torchrun too."""
    from hwnas.train import TrainConfig, train_from_data

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr,
                      label_smoothing=label_smoothing, n_random=n_random, distill=distill,
                      progressive=progressive, augment=augment,
                      smallest_resolution=smallest_resolution, seed=seed, method=method,
                      teacher=str(teacher) if teacher else None, candidates=candidates,
                      pareto=pareto, ema_decay=ema_decay, consistency=consistency,
                      pareto_rating=pareto_rating, pareto_cost=pareto_cost, lut_dir=str(lut),
                      shadow_bn=shadow_bn)
    res = train_from_data(space, data, cfg, out, threads)
    if res.accuracy:  # rank 0 under torchrun
        console.print(res.summary())

@app.command("search")
def search_cmd(
    device: Optional[str] = typer.Option(None, help="device to search for: objective "
                                         "'latency' means latency:<device>"),
    objectives: str = typer.Option("acc,latency", help="comma-separated: acc, "
                                   "latency[:<device>] (several devices allowed), params, "
                                   "macs"),
    budget_ms: str = typer.Option("", help="latency budget(s) in ms on the device, e.g. "
                                  "5,10,15: one best network per budget"),
    algo: Algorithm = typer.Option("nsga2", help="search algorithm"),
    space: str = typer.Option("default", help=SPACE_HELP),
    evaluations: int = typer.Option(200, min=2, help="accuracy evaluations to spend"),
    pop_size: int = typer.Option(40, min=4, help="population size"),
    seed: int = typer.Option(0),
    weights: str = typer.Option("", help="moga: objective=weight,... (e.g. "
                                "latency=2,acc=1)"),
    resolutions: str = typer.Option("", help="restrict input resolutions, e.g. 160,192"),
    checkpoint: Optional[Path] = typer.Option(None, help="supernet checkpoint (hwnas train) "
                                              "for the acc objective"),
    data: str = typer.Option("digits", help="validation data for acc: digits, digits-hard, "
                             "imagefolder:PATH, cifar10:PATH, cifar100:PATH"),
    accuracy_table: Optional[Path] = typer.Option(None, help="instead of a checkpoint: "
                                                  "Parquet/CSV of measured accuracies "
                                                  "(columns arch, acc) to fit a surrogate"),
    lut: Path = typer.Option(Path("lut"), help="folder with tables and predictors"),
    predictor: Optional[Path] = typer.Option(None, help="predictor file for --device "
                                             "(default lut/<device>.predictor.json)"),
    accuracy: Optional[str] = typer.Option(None, help="instead of a checkpoint: a named "
                                           "accuracy source, ofa-predictor:PATH (Once-for-"
                                           "All's ImageNet predictor; no data needed), "
                                           "bn:CKPT (BN-NAS's BN-γ indicator of a supernet) "
                                           "or dna:CKPT (block losses of a DNA supernet)"),
    nat_initial: int = typer.Option(40, min=4, help="nat: archive size before iterating"),
    nat_per_iteration: int = typer.Option(10, min=1, help="nat: evaluations per iteration"),
    nat_adapt_steps: int = typer.Option(0, min=0, help="nat: supernet steps per iteration"),
    verify: Verify = typer.Option("auto", help="measure near-budget archs (prediction ± 2σ "
                                  "straddles a budget) and every best-per-budget arch on the "
                                  "budget device: auto (when it runs here), on, off"),
    verify_limit: int = typer.Option(100, min=0, help="archs measured during the search at "
                                     "most (the best per budget are measured besides)"),
    verify_margin: float = typer.Option(0.03, min=0.0, max=0.99, help="a verified best per "
                                        "budget is measured at least this fraction under its "
                                        "budget (a second measurement of one arch differs by "
                                        "a few percent)"),
    allow_drift: bool = typer.Option(False, help="use tables whose calibration probes this "
                                     "machine runs >10% faster or slower, scaling predictions"),
    out: Optional[Path] = typer.Option(None, help="run folder (default runs/search-<time>)"),
    resume: Optional[Path] = typer.Option(None, help="continue the search in this run "
                                          "folder (its config.json wins)"),
) -> None:
    """Multi-objective search under latency budgets; writes runs/<id>/."""
    from hwnas.search import SearchConfig, SearchError, search

    if resume is not None:  # the run's own config.json says everything
        if out is not None:
            raise SearchError(f"--resume {resume} continues that run in its own folder; drop "
                              f"--out {out}")
        _show_search(search(None, resume, resume=True))
        return
    cfg = SearchConfig.from_flags(
        device, objectives, _float_list(budget_ms, "--budget-ms"), weights, predictor,
        space=space, algorithm=algo, evaluations=evaluations, pop_size=pop_size, seed=seed,
        resolutions=tuple(_int_list(resolutions, "--resolutions")), lut_dir=str(lut),
        checkpoint=str(checkpoint) if checkpoint else None, data=data,
        accuracy_table=str(accuracy_table) if accuracy_table else None, accuracy=accuracy,
        nat_initial=nat_initial, nat_per_iteration=nat_per_iteration,
        nat_adapt_steps=nat_adapt_steps, verify=verify, verify_limit=verify_limit,
        verify_margin=verify_margin, allow_drift=allow_drift)
    _show_search(search(cfg, out))

@app.command("export")
def export_cmd(
    arch: Path = typer.Option(..., help="arch JSON (hwnas or OFA dict, pareto.json entry) "
                              "or a search run folder (its best.json)"),
    format: str = typer.Option("onnx,tflite", "--format", help="comma-separated formats"),
    out: Path = typer.Option(Path("export"), help="output folder"),
    checkpoint: Optional[Path] = typer.Option(None, help="supernet checkpoint for the weights "
                                              "(default: seeded random init)"),
    device: list[str] = typer.Option([], help="measure on this device (repeatable); it runs "
                                     "the exported file of its format"),
    fp16: bool = typer.Option(False, help="also fp16 variants (TFLite fp16 weights, TensorRT "
                              "fp16 engine)"),
    int8: bool = typer.Option(False, help="also a dynamic-range int8 TFLite variant"),
    dynamic_batch: bool = typer.Option(False, help="ONNX with a dynamic batch dimension"),
    simplify: bool = typer.Option(True, help="simplify the ONNX graph with onnxslim (when "
                                  "installed)"),
    space: Optional[str] = typer.Option(None, help=SPACE_HELP + " (default: the checkpoint's "
                                        "or the search run's)"),
    lut: Path = typer.Option(Path("lut"), help="folder with the devices' predictors/LUTs"),
    seed: int = typer.Option(0),
    allow_missing: list[str] = typer.Option([], help="a format or device that may be skipped "
                                            "where this machine cannot produce or run it "
                                            "(repeatable); otherwise a skip is 'incomplete', "
                                            "exit 1"),
    allow_drift: bool = typer.Option(False, help="predict from tables whose calibration "
                                     "probes drifted >10% here, scaled by the drift"),
) -> None:
    """Export an arch to ONNX/TFLite/TensorRT, verify against PyTorch, measure; manifest."""
    from hwnas.export import export

    res = export(arch, out, format.split(","), space=space, checkpoint=checkpoint,
                 devices=device, fp16=fp16, int8=int8, dynamic_batch=dynamic_batch,
                 simplify=simplify, lut_dir=lut, seed=seed, allow_missing=allow_missing,
                 allow_drift=allow_drift)
    _show(*res.tables(), notes=res.notes())

@app.command("evaluate")
def evaluate_cmd(
    arch: Path = typer.Option(..., help="arch JSON (hwnas or OFA dict, pareto.json entry) or "
                              "a search run folder (its best.json)"),
    checkpoint: Path = typer.Option(..., help="supernet checkpoint (hwnas train, or hwnas "
                                    "ofa import-supernet)"),
    data: str = typer.Option(..., help="digits, digits-hard, imagefolder:PATH (streamed; "
                             "PATH/train + PATH/val), cifar10:PATH, cifar100:PATH"),
    space: Optional[str] = typer.Option(None, help=SPACE_HELP + " (default: the "
                                        "checkpoint's)"),
    calib_images: int = typer.Option(2000, min=1, help="training images for BN "
                                     "recalibration (OFA: 2,000)"),
    batch_size: int = typer.Option(100, min=1),
    workers: Optional[int] = typer.Option(None, min=0, help="image decoding processes "
                                          "(default: the cores, at most 8)"),
    seed: int = typer.Option(0),
) -> None:
    """Top-1 and top-5 of one subnet of a supernet, BN statistics recalibrated."""
    from hwnas.evaluate import evaluate_arch

    _show(evaluate_arch(arch, checkpoint, data, space, calib_images, batch_size, seed,
                        workers).table())

ofa_app = typer.Typer(no_args_is_help=True, help="Read Once-for-All's released artefacts: "
                      "supernets, specialised subnets, latency tables.")
app.add_typer(ofa_app, name="ofa")


@ofa_app.command("import-supernet")
def ofa_import_supernet(
    file: Path = typer.Argument(..., help="OFA supernet weights, e.g. "
                                "ofa_mbv3_d234_e346_k357_w1.2"),
    space: str = typer.Option("default", help="default (width 1.0) or default-w1.2"),
    out: Path = typer.Option(..., help="hwnas checkpoint to write"),
) -> None:
    """Turn an OFA MobileNetV3 supernet checkpoint into an hwnas checkpoint."""
    from hwnas.ofa import OFA_RESOLUTIONS, import_supernet
    from hwnas.space import format_resolutions

    path = import_supernet(file, space, out)
    console.print(f"wrote {path}: space {space} at {format_resolutions(OFA_RESOLUTIONS)} px "
                  f"(use it with --checkpoint in search, export and evaluate)")


@ofa_app.command("arch")
def ofa_arch(
    net_config: Path = typer.Argument(..., help="a specialised subnet's net.config"),
    run_config: Optional[Path] = typer.Option(None, help="its run.config (default: the one "
                                              "beside net.config)"),
    space: Optional[str] = typer.Option(None, help=SPACE_HELP + " (default: the width the "
                                        "config has, at 128-224 px)"),
    resolution: Optional[int] = typer.Option(None, help="input size, instead of run.config's"),
    out: Optional[Path] = typer.Option(None, help="write the arch JSON here"),
) -> None:
    """Turn an OFA MobileNetV3 net.config (+ run.config) into an hwnas arch JSON."""
    from hwnas.files import atomic_write_text
    from hwnas.ofa import read_net_config

    arch, sp = read_net_config(net_config, run_config, space, resolution)
    if out is None:
        print(arch.to_json())
    else:
        atomic_write_text(out, arch.to_json() + "\n")
    Console(stderr=True).print(f"{sp.arch_name(arch)} in space {sp.name}"
                               + (f"; wrote {out}" if out else ""), highlight=False)


@ofa_app.command("import-lut")
def ofa_import_lut(
    folder: Path = typer.Argument(..., help="folder of OFA's <r>_lookup_table.yaml files"),
    device: str = typer.Option(..., help="name of the device in lut/ (e.g. note10)"),
    space: str = typer.Option("default-w1.2", help=SPACE_HELP + " (OFA's Note10 tables "
                              "are for the w1.2 network)"),
    lut: Path = typer.Option(Path("lut"), help="folder for the table and its predictor"),
) -> None:
    """Turn OFA's latency tables into an hwnas lookup table and LUT-sum predictor."""
    from hwnas.ofa import import_latency_tables

    res = import_latency_tables(folder, device, space, lut)
    console.print(f"wrote {res.table} ({res.rows} op rows from {len(res.files)} tables) and "
                  f"{res.predictor} (LUT sum, as OFA predicts); use --device {device}")
    for note in res.notes:
        console.print(f"note: {note}", style="yellow")


@app.command("quickstart")
def quickstart_cmd(
    budget_ms: Optional[float] = typer.Option(None, help="latency budget on this CPU (ONNX "
                                              "Runtime); default: the middle of the "
                                              "measured range"),
    minutes: float = typer.Option(10.0, help="rough time budget; scales training and "
                                  "search"),
    out: Path = typer.Option(Path("runs/quickstart"), help="everything goes here; a re-run "
                             "reuses what is valid"),
    seed: int = typer.Option(0),
    subnets: Optional[int] = typer.Option(None, help="subnets measured end to end with "
                                          "ONNX Runtime (default 150, scaled by "
                                          "--minutes)"),
    epochs: Optional[int] = typer.Option(None, help="supernet epochs (default from "
                                         "--minutes)"),
    evaluations: Optional[int] = typer.Option(None, help="accuracy evaluations of the "
                                              "search (default from --minutes)"),
    runs: Optional[int] = typer.Option(None, help="timed runs per visit (default: the "
                                       "device file's)"),
    rounds: Optional[int] = typer.Option(None, help="timing rounds (default: the device "
                                         "file's)"),
    tflite_subnets: Optional[int] = typer.Option(None, help="subnets measured with TFLite "
                                                 "to scale the ONNX Runtime LUT (default 8)"),
) -> None:
    """Profile this CPU, fit the predictor, train, search under a budget, export, measure."""
    from hwnas.ops import describe_presets
    from hwnas.quickstart import NEXT_STEPS, QuickstartConfig, run

    cfg = QuickstartConfig.from_flags(
        minutes, out=str(out), budget_ms=budget_ms, seed=seed, subnets=subnets,
        train_epochs=epochs, evaluations=evaluations, protocol_runs=runs,
        protocol_rounds=rounds, tflite_subnets=tflite_subnets)
    res = run(cfg, console)
    _show(*res.tables(), describe_presets(), notes=[NEXT_STEPS])

def _show(*tables, notes: list[str] = ()) -> None:
    """Print result tables (``hwnas.display.Table``), then lines of notes."""
    for t in tables:
        table = Table(*t.columns, title=t.title or None)
        for row in t.rows:
            table.add_row(*[escape(str(c)) for c in row])
        console.print(table)
    for note in notes:
        console.print(note, highlight=False)


def _show_search(res) -> None:
    _show(res.table(), notes=[f"{label}: {path}" for label, path in res.files.items()])


def _show_report(report) -> None:
    _show(report.table(), notes=[f"{label}: {path}" for label, path in report.files.items()])


def _int_list(text: str, flag: str) -> list[int]:
    return _numbers(text, flag, int, "integers")


def _float_list(text: str, flag: str) -> list[float]:
    return _numbers(text, flag, float, "numbers")


def _numbers(text: str, flag: str, cast, what: str) -> list:
    try:
        return [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise HwnasError(f"{flag} must be comma-separated {what}, got {text!r}") from None


def command() -> typer.core.TyperGroup:
    """The click command typer builds. Options chosen from a registry are annotated with
    ``Literal`` types made from the registry here (typer reads the annotations only now),
    so ``--help`` lists what exists and a wrong name is refused before any work."""
    from typing import Literal

    from hwnas.export import FORMATS
    from hwnas.predictor import FIT_KINDS
    from hwnas.search import ALGORITHMS
    from hwnas.search.config import VERIFY

    globals().update(Algorithm=Literal[tuple(ALGORITHMS.choices())],
                     PredictorKind=Literal[tuple(FIT_KINDS)], Verify=Literal[VERIFY])
    root = typer.main.get_command(app)
    fmt = next(p for p in root.commands["export"].params if p.name == "format")
    fmt.help = f"comma-separated, of: {', '.join(FORMATS.choices())}"
    return root


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning deliberate errors into one line and exit 2."""
    try:
        command()(args=argv, prog_name="hwnas")
    except HwnasError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(exc))}",
                                                   highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
