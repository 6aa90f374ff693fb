"""Subnet accuracy from supernet weights, with batch-norm statistics recalibrated.

A subnet cut from the supernet inherits BN running statistics accumulated over *all*
subnets, which are wrong for it; as Once-for-All does, each subnet's BN statistics are
re-estimated on a fixed set of training images (weights untouched) before top-1 (and top-5)
is measured on the validation split. Deterministic given a seed: the calibration images
and their augmentation are drawn from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from hwnas.data import Dataset, model_input
from hwnas.display import Table
from hwnas.space import Arch
from hwnas.supernet import Supernet


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them as a plain average
    over ``batches`` (any iterable: streamed batches are never all held); parameters are
    not changed. Returns ``net`` in eval mode."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over the batches
    net.train()
    for x in batches:
        net(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return net.eval()


@torch.no_grad()
def top_k(net: nn.Module, data, resolution: int, batch_size: int = 256,
          ks: Sequence[int] = (1, 5), progress: Callable[[int], None] | None = None
          ) -> dict[int, float]:
    """Top-k accuracy (0..1) for each k in ``ks`` on ``data`` at ``resolution`` (a streamed
    folder is resized and centre-cropped to it); ``progress(n)`` after each batch."""
    net.eval()
    correct = {k: 0 for k in ks}
    seen = 0
    for x, y in data.batches(batch_size, shuffle=False, resolution=resolution):
        logits = net(model_input(x, resolution))
        best = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
        hit = best == y[:, None]
        for k in ks:
            correct[k] += int(hit[:, :k].any(1).sum())
        seen += len(y)
        if progress is not None:
            progress(len(y))
    return {k: c / max(seen, 1) for k, c in correct.items()}


def top1(net: nn.Module, data, resolution: int, batch_size: int = 256) -> float:
    return top_k(net, data, resolution, batch_size, ks=(1,))[1]


class Calibration:
    """A fixed set of training images for BN recalibration, seen as training saw them
    (with the set's augmentation, as OFA recalibrates with its training transforms), at
    whichever resolution a subnet takes. In-memory sets keep the drawn batches; a streamed
    folder keeps the indices of a fixed subset (OFA uses 2,000 images) and decodes it again
    for each subnet at that subnet's resolution, so no image is held between subnets."""

    def __init__(self, train, images: int, batch_size: int, seed: int) -> None:
        from hwnas.data import ImageFolderStream

        self.batch_size, self.seed = batch_size, seed
        self.stream = None
        self.held: list[torch.Tensor] = []
        if isinstance(train, ImageFolderStream):
            n = min(len(train), images)
            pick = np.sort(np.random.default_rng(seed).choice(len(train), n, replace=False))
            self.stream = train.subset(pick, f"{train.name}-calibration")
            return
        g, augment = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
        need = images
        for x, _ in train.batches(batch_size, True, g, augment=augment):
            if need <= 0:
                break
            self.held.append(x[:need])
            need -= len(x)

    def __len__(self) -> int:
        return len(self.stream) if self.stream is not None else \
            sum(len(x) for x in self.held)

    def batches(self, resolution: int) -> Iterator[torch.Tensor]:
        if self.stream is None:
            for x in self.held:
                yield model_input(x, resolution)
            return
        augment = torch.Generator().manual_seed(self.seed + 1)  # the same crops every time
        for x, _ in self.stream.batches(self.batch_size, False, augment=augment,
                                        resolution=resolution):
            yield model_input(x, resolution)


def calibration_batches(train: Dataset, n_batches: int, batch_size: int, seed: int
                        ) -> list[torch.Tensor]:
    """The held calibration batches of an in-memory set (see :class:`Calibration`)."""
    return Calibration(train, n_batches * batch_size, batch_size, seed).held


def subnet_accuracy(supernet: Supernet, archs: Sequence[Arch], train, val,
                    calib_batches: int = 8, batch_size: int = 128, seed: int = 0
                    ) -> np.ndarray:
    """Top-1 (0..1) of each arch on ``val`` after BN recalibration on ``train``."""
    calib = Calibration(train, calib_batches * batch_size, batch_size, seed)
    accs = []
    for arch in archs:
        net = supernet.subnet(arch)
        recalibrate_bn(net, calib.batches(arch.r))
        accs.append(top1(net, val, arch.r))
    return np.array(accs)


@dataclass
class Evaluation:
    """What ``hwnas evaluate`` measured for one arch."""

    arch: Arch
    name: str
    top1: float
    top5: float
    images: int
    calibration_images: int
    seconds: float
    data: str = ""

    def table(self) -> Table:
        return Table(f"evaluation on {self.data}", ["arch", "resolution", "top-1", "top-5",
                                                    "images", "BN calibration", "seconds"],
                     [[self.name, str(self.arch.r), f"{self.top1:.2%}", f"{self.top5:.2%}",
                       str(self.images), f"{self.calibration_images} images",
                       f"{self.seconds:.0f}"]])


def evaluate_arch(arch, checkpoint: str | Path, data: str, space: str | None = None,
                  calib_images: int = 2000, batch_size: int = 100, seed: int = 0,
                  workers: int | None = None, progress: bool = True) -> Evaluation:
    """Top-1 and top-5 of one arch cut from a supernet checkpoint, its BN statistics
    recalibrated on ``calib_images`` training images (OFA's 2,000 by default), on the
    validation split of ``data``."""
    import time

    from hwnas.data import load_dataset
    from hwnas.display import progress as progress_bar
    from hwnas.errors import HwnasError
    from hwnas.export import read_arch, space_for
    from hwnas.train import load_supernet

    if calib_images < 1 or batch_size < 1:
        raise HwnasError(f"calibration images and batch size must be >= 1, got "
                         f"{calib_images} and {batch_size}")
    t0 = time.perf_counter()
    sp = space_for(arch, checkpoint, space)
    a = read_arch(arch, sp)
    net = load_supernet(checkpoint, sp)
    train, val = load_dataset(data, max(sp.resolutions), seed, workers)
    if val.num_classes != sp.num_classes:
        raise HwnasError(f"data set {data!r} has {val.num_classes} classes, space "
                         f"{sp.name!r} has {sp.num_classes}")
    calib = Calibration(train, calib_images, batch_size, seed)
    subnet = net.subnet(a)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"BN calibration ({len(calib)} images)", total=len(calib))

        def counted(batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
            for x in batches:
                yield x
                bar.advance(task, len(x))

        recalibrate_bn(subnet, counted(calib.batches(a.r)))
        task = bar.add_task(f"evaluate {len(val)} images at {a.r} px", total=len(val))
        acc = top_k(subnet, val, a.r, batch_size, (1, 5),
                    progress=lambda n: bar.advance(task, n))
    return Evaluation(a, sp.arch_name(a), acc[1], acc[5], len(val), len(calib),
                      time.perf_counter() - t0, data)
