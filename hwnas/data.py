"""Data sets for training the supernet and measuring subnet accuracy.

Nothing is downloaded at run time. The embedded default is scikit-learn's digits (1,797
8x8 grey images of 10 digits, shipped inside scikit-learn), resized to the space's
largest resolution, with a fixed train/val split. Real users point at an ImageFolder
directory (``root/<class>/<image>``) or at CIFAR-10/100 in its standard *binary* format
(``data_batch_*.bin``/``test_batch.bin``, ``train.bin``/``test.bin``); the Python
version of CIFAR is pickled and is refused (no pickle for files from elsewhere).

Every data set here is a pair of tensors (images N×3×R×R float, labels N int64) held in
memory; the trainer resizes batches to each subnet's resolution on the fly. A training set
carries its augmentation (:class:`Augment`: random affine, flip, noise), drawn afresh for
every batch: without it the small nets of a search space memorise a small training set,
and their validation accuracy then says more about luck than about the architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from hwnas.errors import HwnasError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class DataError(HwnasError, ValueError):
    """A data set path is missing or malformed."""


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


BLACK = _normalise(torch.zeros(1, 3, 1, 1))  # what a pixel outside the image becomes


@dataclass(frozen=True)
class Augment:
    """A random distortion of each image of a batch: rotation up to ``rotate`` degrees, a
    zoom drawn from ``zoom`` (>1 enlarges the content), a shift of up to ``shift`` of the
    image size, a horizontal flip with probability ``flip``, and Gaussian pixel noise of
    standard deviation ``noise`` (in normalised units). One ``grid_sample`` per batch;
    pixels moved in from outside the image are black. Random numbers come only from the
    given generator, so a seeded run distorts identically every time."""

    rotate: float = 0.0
    zoom: tuple[float, float] = (1.0, 1.0)
    shift: float = 0.0
    flip: float = 0.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.zoom
        bad = [(name, ok) for name, ok in (
            ("rotate", 0 <= self.rotate <= 180), ("zoom", 0 < lo <= hi),
            ("shift", 0 <= self.shift <= 1), ("flip", 0 <= self.flip <= 1),
            ("noise", self.noise >= 0)) if not ok]
        if bad:
            raise DataError(f"augmentation setting {bad[0][0]}={getattr(self, bad[0][0])!r} "
                            f"is not allowed: rotate in [0, 180], 0 < zoom low <= high, "
                            f"shift and flip in [0, 1], noise >= 0")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, *shape, generator=generator)

        angle = uniform(-1, 1) * math.radians(self.rotate)
        scale = 1.0 / uniform(*self.zoom)  # the sampling step: content zoomed by 1/scale
        shift = uniform(-1, 1, 2) * 2 * self.shift  # affine_grid spans [-1, 1]
        mirror = torch.ones(n)
        if self.flip:
            mirror = torch.where(uniform(0, 1) < self.flip, -1.0, 1.0)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack([torch.stack([cos * mirror, -sin, shift[:, 0]], 1),
                             torch.stack([sin * mirror, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x - BLACK, grid, align_corners=False) + BLACK
        if self.noise:
            out = out + torch.randn(out.shape, generator=generator) * self.noise
        return out


# Natural images (CIFAR, ImageFolder): the usual shifted crop (4 px of 32) and mirror.
NATURAL = Augment(shift=0.125, flip=0.5)


@dataclass
class Dataset:
    """Images (N, 3, R, R), normalised, and labels (N,); a training set may carry the
    augmentation its batches get while training (``augment``)."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    augment: Augment | None = None

    def __len__(self) -> int:
        return int(self.labels.numel())

    def batches(self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
                rank: int = 0, world: int = 1, drop_last: bool = False,
                augment: torch.Generator | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Index batches; with ``world`` > 1 each rank gets its own shard of every epoch.
        With an ``augment`` generator, each batch is distorted by the set's augmentation
        (if it has one), drawn from that generator."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order[rank::world]
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            x = self.images[idx]
            if augment is not None and self.augment is not None:
                x = self.augment(x, augment)
            yield x, self.labels[idx]


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    if x.shape[-1] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=x.shape[-1] > resolution)


def model_input(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """A batch as the nets take it: resized, in channels-last layout. On CPU, oneDNN's
    depthwise convolutions train about 2.5x faster on it than on NCHW (sandwich steps of
    the small space, 2 threads: 195 vs 78 img/s), and it is the layout GPUs prefer."""
    return resize(x, resolution).contiguous(memory_format=torch.channels_last)


def digits(resolution: int = 48, val_fraction: float = 0.2, seed: int = 0
           ) -> tuple[Dataset, Dataset]:
    """scikit-learn's digits, 3-channel, resized to ``resolution``, fixed stratified split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the embedded digits data set needs scikit-learn (pip install "
                        "'hwnas[predict]')") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = resize(x.repeat(1, 3, 1, 1), resolution)
    y = torch.tensor(d.target, dtype=torch.int64)
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in range(10):
        idx = np.flatnonzero(d.target == c)
        val_idx += list(rng.choice(idx, int(round(len(idx) * val_fraction)), replace=False))
    val_mask = np.zeros(len(y), dtype=bool)
    val_mask[val_idx] = True
    x = _normalise(x)
    tr, va = torch.from_numpy(~val_mask), torch.from_numpy(val_mask)
    return (Dataset(x[tr], y[tr], 10, "digits-train"), Dataset(x[va], y[va], 10, "digits-val"))


def digits_hard(resolution: int = 48, val_fraction: float = 0.2, seed: int = 0,
                strength: float = 1.0, val_copies: int = 1) -> tuple[Dataset, Dataset]:
    """Digits made hard enough that capacity shows in accuracy (plain digits saturates
    near 99% for every subnet). The validation split is one fixed draw of the distortion
    below (its generator seeded independently of ``seed``, so the task never changes),
    with ``val_copies`` differently distorted copies of each image for accuracy in finer
    steps. The training split is the clean digits carrying the same distortion as its
    augmentation, so training sees a fresh draw of every image in every epoch."""
    if val_copies < 1:
        raise DataError(f"val_copies must be >= 1, got {val_copies}")
    tr, va = digits(resolution, val_fraction, seed)
    # rotation up to 45 degrees, content scaled by 0.55-1.1, shift up to 15%, pixel noise
    # of 0.35 of the clean digits' standard deviation; all but the scale times strength.
    # Geometry rather than noise makes it hard: learning the invariances takes capacity,
    # so accuracy grows with the subnet (stand-alone, small space: 93.7% for the smallest
    # to 96.8% for the largest), where noise would only add error that no net removes.
    augment = Augment(rotate=45 * strength, zoom=(0.55, 1.1), shift=0.15 * strength,
                      noise=0.35 * strength * float(tr.images.std()))
    g = torch.Generator().manual_seed(20261122)
    images = augment(va.images.repeat(val_copies, 1, 1, 1), g)
    return (Dataset(tr.images, tr.labels, 10, "digits-hard-train", augment),
            Dataset(images, va.labels.repeat(val_copies), 10, "digits-hard-val"))


def image_folder(root: str | Path, resolution: int, val_fraction: float = 0.2, seed: int = 0
                 ) -> tuple[Dataset, Dataset]:
    """``root/<class>/<image>`` (or ``root/train`` and ``root/val`` each laid out so); the
    training split is augmented with shifts and mirroring (:data:`NATURAL`)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"ImageFolder path {root} is not a directory")
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = _read_folder(root / "train", resolution)
        val = _read_folder(root / "val", resolution, classes=train[2])
        return (Dataset(train[0], train[1], len(train[2]), f"{root.name}-train", NATURAL),
                Dataset(val[0], val[1], len(train[2]), f"{root.name}-val"))
    x, y, classes = _read_folder(root, resolution)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    n_val = max(1, int(len(y) * val_fraction))
    va, tr = order[:n_val], order[n_val:]
    return (Dataset(x[tr], y[tr], len(classes), f"{root.name}-train", NATURAL),
            Dataset(x[va], y[va], len(classes), f"{root.name}-val"))


def _read_folder(root: Path, resolution: int, classes: list[str] | None = None):
    from PIL import Image, UnidentifiedImageError

    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    classes = classes or found
    if not classes:
        raise DataError(f"ImageFolder {root} has no class sub-directories (expected "
                        f"{root}/<class>/<image>)")
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"ImageFolder {root} lacks the class directory {name!r}")
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB").resize((resolution, resolution), Image.BILINEAR)
                    images.append(np.asarray(im, dtype=np.float32) / 255.0)
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"cannot read image {f}: {exc}") from None
            labels.append(label)
    if not images:
        raise DataError(f"ImageFolder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return _normalise(x), torch.tensor(labels, dtype=torch.int64), classes


def cifar(root: str | Path, resolution: int, classes: int = 10) -> tuple[Dataset, Dataset]:
    """CIFAR-10/100 from its standard binary distribution (no pickle); the training split
    is augmented with shifts and mirroring (:data:`NATURAL`)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"CIFAR path {root} is not a directory")
    if classes == 10:
        train_files = [root / f"data_batch_{i}.bin" for i in range(1, 6)]
        test_files = [root / "test_batch.bin"]
        label_bytes, label_at = 1, 0
    elif classes == 100:
        train_files, test_files = [root / "train.bin"], [root / "test.bin"]
        label_bytes, label_at = 2, 1  # coarse label, then fine label
    else:
        raise DataError(f"CIFAR has 10 or 100 classes, not {classes}")
    missing = [f.name for f in train_files + test_files if not f.exists()]
    if missing:
        hint = ""
        if (root / "data_batch_1").exists() or (root / "train").exists():
            hint = (" (this looks like the Python/pickle version, which hwnas does not load; "
                    "use the binary version: cifar-10-binary / cifar-100-binary)")
        raise DataError(f"CIFAR-{classes} directory {root} lacks {missing}{hint}")

    def read(files):
        rec = label_bytes + 3072
        xs, ys = [], []
        for f in files:
            raw = np.fromfile(f, dtype=np.uint8)
            if raw.size % rec:
                raise DataError(f"{f} is not a CIFAR-{classes} binary file (size "
                                f"{raw.size} is not a multiple of {rec})")
            raw = raw.reshape(-1, rec)
            ys.append(raw[:, label_at].astype(np.int64))
            xs.append(raw[:, label_bytes:].reshape(-1, 3, 32, 32))
        x = torch.from_numpy(np.concatenate(xs)).float() / 255.0
        return _normalise(resize(x, resolution)), torch.from_numpy(np.concatenate(ys))

    (xt, yt), (xv, yv) = read(train_files), read(test_files)
    return (Dataset(xt, yt, classes, f"cifar{classes}-train", NATURAL),
            Dataset(xv, yv, classes, f"cifar{classes}-test"))


def load_dataset(spec: str, resolution: int, seed: int = 0) -> tuple[Dataset, Dataset]:
    """``digits`` (embedded), ``digits-hard`` (the same, distorted and noisy),
    ``imagefolder:PATH``, ``cifar10:PATH`` or ``cifar100:PATH``."""
    kind, _, path = spec.partition(":")
    if kind == "digits" and not path:
        return digits(resolution, seed=seed)
    if kind == "digits-hard" and not path:
        return digits_hard(resolution, seed=seed)
    if kind == "imagefolder" and path:
        return image_folder(path, resolution, seed=seed)
    if kind in ("cifar10", "cifar100") and path:
        return cifar(path, resolution, 10 if kind == "cifar10" else 100)
    raise DataError(f"unknown data set {spec!r}; use digits, digits-hard, imagefolder:PATH, "
                    f"cifar10:PATH or cifar100:PATH")
