"""Supernet training: the loop every method shares, and its checkpoints.

What one step trains is the method's (:mod:`hwnas.methods`, ``--method``): by default the
sandwich rule with in-place distillation (BigNAS/AttentiveNAS): the largest subnet on the
labels, the smallest and ``n_random`` random ones on its soft predictions; or FairNAS,
AttentiveNAS, Pi-NAS or DNA. The loop owns the rest: SGD with Nesterov momentum and a
cosine schedule, batches distorted by the training set's augmentation
(``Dataset.augment``), drawn afresh each time, and optional progressive shrinking (OFA)
that opens the elastic dimensions one after another: kernel, then depth, then expand
ratio. Each subnet sees the batch at its own resolution.

Checkpoints are written at the end of every epoch (atomically) and hold the weights, the
optimiser and scheduler, the RNG state, the config and the space, in a form read with
``torch.load(weights_only=True)``; resuming reproduces the uninterrupted run exactly
(data order and subnet draws are derived from (seed, epoch, step)).

Distributed: under ``torchrun --nproc_per_node N`` each rank trains on its shard of every
batch order; gradients are averaged across ranks after the sandwich (NCCL on GPUs, Gloo on
CPU), so weights stay identical on every rank.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from hwnas.data import Dataset, model_input
from hwnas.errors import HwnasError, check_settings
from hwnas.display import progress as progress_bar
from hwnas.files import atomic_torch_save, load_tensors
from hwnas.space import Arch, SearchSpace, get_space
from hwnas.methods import METHODS
from hwnas.methods.sandwich import sandwich_archs  # noqa: F401  (re-exported)
from hwnas.supernet import Supernet

CHECKPOINT_FORMAT = 1


class TrainError(HwnasError, ValueError):
    """Bad training settings, or a checkpoint that does not fit."""


SMALLEST_RESOLUTIONS = ("random", "min")
PARETO = ("best", "worst")


@dataclass(frozen=True)
class TrainConfig:
    """Validated training settings."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-5
    label_smoothing: float = 0.1
    n_random: int = 2                 # random subnets per step besides largest and smallest
    distill: bool = True              # in-place distillation from the largest subnet
    smallest_resolution: str = "random"  # the smallest subnet's: "random" per step, or "min"
    augment: bool = True              # the training set's own augmentation, fresh per batch
    progressive: bool = False         # OFA's progressive shrinking
    warmup_epochs: int = 1
    seed: int = 0
    method: str = "sandwich"          # see hwnas.methods.METHODS
    teacher: str | None = None        # dna: a supernet checkpoint whose largest subnet teaches
    candidates: int = 3               # attentive: archs rated per random subnet
    pareto: str = "best"              # attentive: train the best or the worst of them
    pareto_rating: str = "loss"       # attentive: rate them by "loss" or "acc-table:PATH"
    pareto_cost: str = "macs"         # attentive: cost levels by "macs" or "latency:DEVICE"
    lut_dir: str = "lut"              # attentive: where latency:DEVICE's predictor is
    ema_decay: float = 0.99           # pinas: the mean teacher's decay per step
    consistency: float = 1.0          # pinas: weight of the cross-path loss
    shadow_bn: bool = True            # multi-path spaces: one depthwise BN per path count

    def __post_init__(self) -> None:
        check_settings([
            ("epochs", self.epochs >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"), ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("n_random", self.n_random >= 0, ">= 0"),
            ("smallest_resolution", self.smallest_resolution in SMALLEST_RESOLUTIONS,
             " or ".join(SMALLEST_RESOLUTIONS)),
            ("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs, "in [0, epochs]"),
            ("method", self.method in METHODS, " or ".join(METHODS)),
            ("teacher", self.teacher is None or self.method == "dna",
             "only with method dna"),
            # the other methods choose their subnets without phases (and Pi-NAS's teacher
            # and DNA's stages would not follow a channel re-ordering)
            ("progressive", not self.progressive or self.method == "sandwich",
             f"False with method {self.method!r} (progressive shrinking is the sandwich "
             f"method's)"),
            ("candidates", self.candidates >= 1, ">= 1"),
            ("pareto", self.pareto in PARETO, " or ".join(PARETO)),
            ("pareto_rating", self.pareto_rating == "loss"
             or self.pareto_rating.startswith("acc-table:"), "loss or acc-table:PATH"),
            ("pareto_cost", self.pareto_cost == "macs"
             or self.pareto_cost.startswith("latency:"), "macs or latency:DEVICE"),
            ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)"),
            ("consistency", self.consistency >= 0, ">= 0")],
            TrainError, "training setting", self)


@dataclass
class TrainResult:
    checkpoint: Path
    epochs_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    net: Supernet | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # largest/smallest top-1

    def summary(self) -> str:
        """The line ``hwnas train`` prints."""
        acc = "".join(f", {k} {v:.2%}" for k, v in self.accuracy.items())
        return (f"checkpoint {self.checkpoint} after {self.epochs_done} epoch(s)"
                + (f"; top-1 (BN recalibrated){acc[1:]}" if acc else ""))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun set up (NCCL with CUDA, else Gloo)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _world()


def seeded(*key: int) -> torch.Generator:
    """A torch generator seeded from a tuple of ints (seed, epoch, rank, ...)."""
    return torch.Generator().manual_seed(
        int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0]))


def lr_at(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return float(cfg.lr * (step + 1) / warm)
    return float(0.5 * cfg.lr * (1 + np.cos(np.pi * (step - warm) / max(1, total - warm))))


def save_checkpoint(path: Path, net: Supernet, opt, epoch: int, cfg: TrainConfig,
                    history: list, method=None) -> Path:
    """Everything a resume needs; with a method's own state (``method_state``) and the
    weights it rates subnets with where those are not the trained ones (``rating_model``,
    which :func:`load_supernet` prefers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "model": net.state_dict(),
             "optimizer": opt.state_dict(), "config": dataclasses.asdict(cfg),
             "space": net.space.to_dict(), "space_id": net.space.id,
             "torch_rng": torch.get_rng_state(), "history": history}
    if method is not None:
        if extra := method.state_dict():
            state["method_state"] = extra
        if (rating := method.rating_weights(net)) is not None:
            state["rating_model"] = rating
    return atomic_torch_save(state, path)


def load_checkpoint(path: str | Path, space: SearchSpace | None = None,
                    exact: bool = False) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); refuse one whose weights do not
    fit ``space`` (with ``exact``: one of any other space, resolutions included, as
    resuming a training run needs)."""
    path = Path(path)
    state = load_tensors(path, TrainError, "hwnas checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT \
            or not isinstance(state.get("model"), dict) or "space" not in state:
        raise TrainError(f"{path} is not an hwnas supernet checkpoint (format "
                         f"{CHECKPOINT_FORMAT}; an Once-for-All file is imported with "
                         f"'hwnas ofa import-supernet')")
    try:
        own = SearchSpace.from_dict(state["space"])
    except HwnasError as exc:
        raise TrainError(f"{path}: {exc}") from None
    if space is not None:
        same = own.id == space.id if exact else own.weights_id == space.weights_id
        if not same:
            raise TrainError(f"{path} holds a supernet of space {own.name!r} (id {own.id}), "
                             f"not {space.name!r} (id {space.id})")
    return state


def load_supernet(path: str | Path, space: SearchSpace | None = None) -> Supernet:
    """A supernet with the weights of a checkpoint, in ``space`` (any resolutions of the
    checkpoint's space; by default its own): the weights its method rates subnets with
    (Pi-NAS: the mean teacher), which are the trained ones for most methods."""
    state = load_checkpoint(path, space)
    net = Supernet(space or SearchSpace.from_dict(state["space"]),
                   shadow_bn=state.get("config", {}).get("shadow_bn", True))
    try:
        net.load_state_dict(state.get("rating_model", state["model"]))
    except RuntimeError as exc:
        raise TrainError(f"{path}: its weights do not fit the supernet: "
                         f"{' '.join(str(exc).split())[:300]}") from None
    return net.eval()


def _sync_grads(net: torch.nn.Module, world: int) -> None:
    if world == 1:
        return
    for p in net.parameters():
        if not p.requires_grad:  # frozen by the method (DNA's stem and head)
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def train(space: SearchSpace | str, train_data: Dataset, cfg: TrainConfig,
          out_dir: str | Path, resume: bool = True, progress: bool = True,
          max_steps: int | None = None) -> TrainResult:
    """Train (or resume training of) a supernet; checkpoints go to ``out_dir/last.pt``."""
    space = get_space(space)
    if train_data.num_classes != space.num_classes:
        raise TrainError(f"the data set has {train_data.num_classes} classes but space "
                         f"{space.name!r} has {space.num_classes}")
    rank, world = _world()
    out = Path(out_dir)
    ckpt = out / "last.pt"
    torch.manual_seed(cfg.seed)
    net = Supernet(space, shadow_bn=cfg.shadow_bn)
    device = torch.device("cuda", rank % torch.cuda.device_count()) \
        if torch.cuda.is_available() else torch.device("cpu")
    net.to(device)
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (no_decay if p.ndim <= 1 or "kernel_transforms" in name else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                          momentum=cfg.momentum, nesterov=True)
    method = METHODS[cfg.method](space, cfg, net)
    start, history = 0, []
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt, space, exact=True)
        # settings added since the checkpoint was written take their defaults
        stored = {**dataclasses.asdict(TrainConfig()), **state["config"]}
        if stored != dataclasses.asdict(cfg):
            diff = {k: (stored.get(k), v) for k, v in dataclasses.asdict(cfg).items()
                    if stored.get(k) != v}
            raise TrainError(f"{ckpt} was trained with other settings {diff}; use another "
                             f"--out or the same settings to resume")
        net.load_state_dict(state["model"])
        method.load_state_dict(state.get("method_state", {}))
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start, history = state["epoch"] + 1, list(state["history"])
    steps_per_epoch = len(range(0, len(train_data) // world, cfg.batch_size))
    with progress_bar(progress and rank == 0) as bar:
        task = bar.add_task("train", total=(cfg.epochs - start) * steps_per_epoch)
        steps = 0
        for epoch in range(start, cfg.epochs):
            net.train()
            g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            augment = seeded(cfg.seed, epoch, rank) if cfg.augment else None
            t0, seen, loss_sum, nb = time.perf_counter(), 0, 0.0, 0
            reorganized = method.begin_epoch(net, epoch)
            if reorganized:
                opt.state.clear()  # momentum of the old channel order (OFA: a new optimiser)
            for step, (x, y) in enumerate(train_data.batches(cfg.batch_size, True, g, rank,
                                                             world, augment=augment)):
                x, y = x.to(device), y.to(device)
                global_step = epoch * steps_per_epoch + step
                for group in opt.param_groups:
                    group["lr"] = lr_at(global_step, steps_per_epoch, cfg)
                rng = np.random.default_rng([cfg.seed, epoch, step])
                opt.zero_grad(set_to_none=True)
                loss_sum += method.step(net, x, y, rng, epoch)
                _sync_grads(net, world)
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                method.after_step(net)
                seen += len(y) * world
                nb += 1
                steps += 1
                bar.update(task, advance=1, description=(
                    f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum / nb:.3f} "
                    f"{seen / (time.perf_counter() - t0):.0f} img/s"))
                if max_steps is not None and steps >= max_steps:
                    break
            history.append({"epoch": epoch, "loss": loss_sum / max(nb, 1),
                            "images_per_s": seen / (time.perf_counter() - t0),
                            **({"channels_reorganized": True} if reorganized else {})})
            if rank == 0:
                save_checkpoint(ckpt, net, opt, epoch, cfg, history, method)
            if world > 1:
                dist.barrier()
            if max_steps is not None and steps >= max_steps:
                break
    net.set_active(space.largest())
    return TrainResult(ckpt, len(history), history, net)


def train_from_data(space: SearchSpace | str, data: str, cfg: TrainConfig, out_dir: str | Path,
                    threads: int | None = None) -> TrainResult:
    """``hwnas train``: load ``data`` (a data set spec), join the torchrun process group if
    there is one, train, and (on rank 0) measure the largest and smallest subnets' top-1
    with BN recalibrated."""
    from hwnas.data import load_dataset
    from hwnas.evaluate import subnet_accuracy

    if threads:
        torch.set_num_threads(threads)
    rank, _ = init_distributed()
    sp = get_space(space)
    train_set, val_set = load_dataset(data, max(sp.resolutions), cfg.seed)
    res = train(sp, train_set, cfg, out_dir)
    if rank == 0:
        acc = subnet_accuracy(res.net.cpu(), [sp.largest(), sp.smallest()], train_set,
                              val_set, seed=cfg.seed)
        res.accuracy = {"largest": float(acc[0]), "smallest": float(acc[1])}
    return res


def adapt_supernet(net: Supernet, archs: Sequence[Arch], data: Dataset, steps: int,
                   lr: float = 0.005, batch_size: int = 64, seed: int = 0) -> Supernet:
    """NAT's supernet adaptation: ``steps`` SGD steps, each on one subnet drawn from
    ``archs`` (the search's current best), so the shared weights follow the search."""
    if steps <= 0 or not archs:
        return net
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    rng = np.random.default_rng(seed)
    g, augment = torch.Generator().manual_seed(seed), seeded(seed, 1)
    net.train()
    done = 0
    while done < steps:
        for x, y in data.batches(batch_size, True, g, augment=augment):
            arch = archs[int(rng.integers(len(archs)))]
            net.set_active(arch)
            loss = F.cross_entropy(net(model_input(x, arch.r)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break
    net.set_active(net.space.largest())
    return net.eval()
