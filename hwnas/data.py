"""Data sets for training the supernet and measuring subnet accuracy.

Nothing is downloaded at run time. The embedded default is scikit-learn's digits (1,797
8x8 grey images of 10 digits, shipped inside scikit-learn), resized to the space's
largest resolution, with a fixed train/val split. Real users point at an ImageFolder
directory (``root/<class>/<image>``) or at CIFAR-10/100 in its standard *binary* format
(``data_batch_*.bin``/``test_batch.bin``, ``train.bin``/``test.bin``); the Python
version of CIFAR is pickled and is refused (no pickle for files from elsewhere).

The embedded and CIFAR sets are pairs of tensors (images N×3×R×R float, labels N int64)
held in memory; an ImageFolder (ImageNet) is streamed from disk by worker processes with
Pillow (no torchvision, which cannot be imported beside the CPU build of torch), so its
memory does not grow with its size. Both offer ``batches``; the trainer resizes batches to
each subnet's resolution on the fly. A training set
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
                augment: torch.Generator | None = None, resolution: int | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Index batches; with ``world`` > 1 each rank gets its own shard of every epoch
        (padded as ``DistributedSampler`` pads, so every rank runs as many steps). With an
        ``augment`` generator, each batch is distorted by the set's augmentation (if it
        has one), drawn from that generator. ``resolution`` is accepted for the streamed
        sets' sake; held images are resized by :func:`model_input`."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if world > 1:
            pad = -n % world
            order = torch.cat([order, order[:pad]])[rank::world]
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


def image_folder(root: str | Path, resolution: int, val_fraction: float = 0.2, seed: int = 0,
                 workers: int | None = None) -> tuple["ImageFolderStream", "ImageFolderStream"]:
    """``root/<class>/<image>`` (or ``root/train`` and ``root/val`` each laid out so),
    streamed from disk: the training split is augmented with random-resized crops and
    mirroring, the validation split resized and centre-cropped (:class:`ImageFolderStream`).
    Without train/val sub-folders, a seeded ``val_fraction`` of the images is held out."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"ImageFolder path {root} is not a directory")
    workers = default_workers() if workers is None else workers
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = ImageFolderStream.scan(root / "train", resolution, f"{root.name}-train",
                                       train=True, workers=workers)
        val = ImageFolderStream.scan(root / "val", resolution, f"{root.name}-val",
                                     classes=train.classes, workers=workers)
        return train, val
    every = ImageFolderStream.scan(root, resolution, root.name, workers=workers)
    order = np.random.default_rng(seed).permutation(len(every))
    n_val = max(1, int(len(every) * val_fraction))
    if len(every) - n_val < 1:
        raise DataError(f"ImageFolder {root} has {len(every)} image(s): too few to split "
                        f"into training and validation")
    return (every.subset(np.sort(order[n_val:]), f"{root.name}-train", train=True),
            every.subset(np.sort(order[:n_val]), f"{root.name}-val", train=False))


def default_workers() -> int:
    """Decoding processes for streamed images: the cores there are, at most 8."""
    import os

    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


@dataclass(frozen=True)
class CropAugment:
    """Random-resized crop (a region of ``scale`` of the area and ``ratio`` aspect,
    Inception-style as Once-for-All trains) and a horizontal flip with probability
    ``flip``; drawn per image from a seed, so a seeded epoch crops identically."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5

    def box(self, width: int, height: int, rng: np.random.Generator
            ) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the crop; the centre square after 10 misses."""
        area = width * height
        log_ratio = np.log(self.ratio)
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = float(np.exp(rng.uniform(*log_ratio)))
            w = int(round(np.sqrt(target * aspect)))
            h = int(round(np.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                left = int(rng.integers(0, width - w + 1))
                top = int(rng.integers(0, height - h + 1))
                return left, top, left + w, top + h
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side


# Resize so that a centre crop keeps 87.5% of the shorter side (Once-for-All's, and the
# usual, ImageNet evaluation transform).
EVAL_CROP = 0.875


def decode(path: Path, size: int, augment: CropAugment | None = None,
           rng: np.random.Generator | None = None) -> torch.Tensor:
    """One image file as a normalised (3, size, size) tensor: with ``augment`` a random
    crop of it, else resized and centre-cropped. Raises :class:`DataError` naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if augment is None:
                short = int(math.ceil(size / EVAL_CROP))
                im.draft("RGB", (short, short))  # JPEG: decode at a reduced scale
                im = im.convert("RGB")
                w, h = im.size
                scale = short / min(w, h)
                im = im.resize((max(short, round(w * scale)), max(short, round(h * scale))),
                               Image.BILINEAR)
                w, h = im.size
                left, top = (w - size) // 2, (h - size) // 2
                im = im.crop((left, top, left + size, top + size))
            else:
                im = im.convert("RGB")
                im = im.resize((size, size), Image.BILINEAR, box=augment.box(*im.size, rng))
                if rng.random() < augment.flip:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
            x = np.asarray(im, dtype=np.float32) / 255.0
    except Exception as exc:  # Pillow's decoders raise many types on a bad file
        raise DataError(f"cannot read image {path}: {exc or type(exc).__name__}") from None
    x = torch.from_numpy(x).permute(2, 0, 1)
    return (x - MEAN[0]) / STD[0]


class ImageFolderStream:
    """An image folder read lazily through a torch ``DataLoader``: worker processes
    decode with Pillow, and only the current batches are in memory (the index costs a few
    bytes per file; ImageNet's 1.28 M files take about 50 MB). Same ``batches`` interface
    as :class:`Dataset`; batches come at the stream's resolution, or at the one asked."""

    def __init__(self, root: Path, files: np.ndarray, labels: np.ndarray, classes: list[str],
                 resolution: int, name: str, train: bool = False, workers: int = 0) -> None:
        self.root, self.files, self.labels = Path(root), files, labels
        self.classes, self.resolution, self.name = list(classes), int(resolution), name
        self.augment = CropAugment() if train else None
        self.workers = int(workers)

    @classmethod
    def scan(cls, root: Path, resolution: int, name: str, classes: list[str] | None = None,
             train: bool = False, workers: int = 0) -> "ImageFolderStream":
        """Index ``root/<class>/<image>`` (file names only; nothing is decoded)."""
        import os

        found = sorted(e.name for e in os.scandir(root) if e.is_dir())
        classes = list(classes or found)
        if not classes:
            raise DataError(f"ImageFolder {root} has no class sub-directories (expected "
                            f"{root}/<class>/<image>)")
        files: list[bytes] = []
        labels: list[int] = []
        for label, cls_name in enumerate(classes):
            folder = root / cls_name
            if not folder.is_dir():
                raise DataError(f"ImageFolder {root} lacks the class directory {cls_name!r}")
            names = sorted(e.name for e in os.scandir(folder) if e.is_file()
                           and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS)
            files += [os.fsencode(f"{cls_name}/{n}") for n in names]
            labels += [label] * len(names)
        if not files:
            raise DataError(f"ImageFolder {root} contains no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        return cls(root, np.array(files), np.array(labels, dtype=np.int64), classes,
                   resolution, name, train, workers)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        import os

        return self.root / os.fsdecode(bytes(self.files[i]))

    def subset(self, indices: np.ndarray, name: str | None = None,
               train: bool | None = None) -> "ImageFolderStream":
        """The images at ``indices`` (e.g. a fixed calibration set)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageFolderStream(self.root, self.files[idx], self.labels[idx], self.classes,
                                 self.resolution, name or self.name,
                                 self.augment is not None if train is None else train,
                                 self.workers)

    def batches(self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
                rank: int = 0, world: int = 1, drop_last: bool = False,
                augment: torch.Generator | None = None, resolution: int | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches decoded by worker processes. With ``world`` > 1 a ``DistributedSampler``
        gives each rank its share (every rank the same number of batches). With an
        ``augment`` generator the training crops are drawn (per image, from one seed it
        gives), otherwise images are resized and centre-cropped."""
        from torch.utils.data import DataLoader, DistributedSampler

        n = len(self)
        if world > 1:
            seed = int(torch.randint(2 ** 31, (1,), generator=generator)) if generator else 0
            order = list(DistributedSampler(range(n), num_replicas=world, rank=rank,
                                            shuffle=shuffle, seed=seed))
        else:
            order = (torch.randperm(n, generator=generator) if shuffle
                     else torch.arange(n)).tolist()
        aug_seed = None
        if augment is not None and self.augment is not None:
            aug_seed = int(torch.randint(2 ** 62, (1,), generator=augment))
        items = _Decoded(self, resolution or self.resolution, aug_seed)
        loader = DataLoader(items, batch_size=batch_size, sampler=order, drop_last=drop_last,
                            num_workers=self.workers, collate_fn=_collate,
                            prefetch_factor=2 if self.workers else None,
                            multiprocessing_context=_worker_start() if self.workers else None)
        for x, y, problem in loader:
            if problem:
                raise DataError(problem)
            yield x, y


def _worker_start() -> str | None:
    """How DataLoader workers start: forked (0.1 s), unless JAX is loaded in this process
    (the TFLite converter brings it): forking after JAX started its threads can deadlock,
    so then from a fork server (1.5 s per loader here)."""
    import sys

    return "forkserver" if "jax" in sys.modules else None


class _Decoded(torch.utils.data.Dataset):
    """Item i of a stream, decoded; a file that cannot be read becomes its error message
    (raised by the reading process, so the one-line message survives the worker)."""

    def __init__(self, stream: ImageFolderStream, size: int, aug_seed: int | None) -> None:
        self.stream, self.size, self.aug_seed = stream, size, aug_seed

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        augment = self.stream.augment if self.aug_seed is not None else None
        rng = np.random.default_rng([self.aug_seed, i]) if augment else None
        try:
            return decode(self.stream.path(i), self.size, augment, rng), \
                int(self.stream.labels[i]), ""
        except DataError as exc:
            return None, -1, str(exc)


def _collate(items):
    problem = next((p for _, _, p in items if p), "")
    if problem:
        return None, None, problem
    return (torch.stack([x for x, _, _ in items]),
            torch.tensor([y for _, y, _ in items], dtype=torch.int64), "")


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


def load_dataset(spec: str, resolution: int, seed: int = 0, workers: int | None = None
                 ) -> tuple[Dataset | ImageFolderStream, Dataset | ImageFolderStream]:
    """``digits`` (embedded), ``digits-hard`` (the same, distorted and noisy),
    ``imagefolder:PATH`` (streamed from disk by ``workers`` processes), ``cifar10:PATH``
    or ``cifar100:PATH``."""
    kind, _, path = spec.partition(":")
    if kind == "digits" and not path:
        return digits(resolution, seed=seed)
    if kind == "digits-hard" and not path:
        return digits_hard(resolution, seed=seed)
    if kind == "imagefolder" and path:
        return image_folder(path, resolution, seed=seed, workers=workers)
    if kind in ("cifar10", "cifar100") and path:
        return cifar(path, resolution, 10 if kind == "cifar10" else 100)
    raise DataError(f"unknown data set {spec!r}; use digits, digits-hard, imagefolder:PATH, "
                    f"cifar10:PATH or cifar100:PATH")
