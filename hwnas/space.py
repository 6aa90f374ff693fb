"""The search space: which networks exist, how they are written down and encoded.

A :class:`SearchSpace` is a value (every width, stride, choice and the number of stages is
a parameter), so the Once-for-All MobileNetV3 space and a small space for tests are two
instances of one class. An :class:`Arch` is one network of a space. Archs are made and
checked by the space (:meth:`SearchSpace.arch`), which puts them in canonical form: the
slots beyond a stage's depth are normalised, so two spellings of one network compare and
hash equal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from hwnas import encoding
from hwnas.encoding import _num
from hwnas.errors import SpaceError
from hwnas.registry import Registry

ACTIVATIONS = ("relu", "hswish", "swish")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` (never more than 10% down)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return int(new)


@dataclass(frozen=True)
class StageSpec:
    """One stage of elastic blocks: output width, stride of its first block, activation, SE.

    ``widths``, ``depths`` and ``expands`` give the stage its own choices (AttentiveNAS's
    space has them per stage); empty, the space's apply (``width`` fixed unless the space
    has ``width_mults``)."""

    width: int
    stride: int
    act: str
    se: bool
    widths: tuple[int, ...] = ()
    depths: tuple[int, ...] = ()
    expands: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form; per-stage choices only where set, so older spaces keep their ids."""
        out: dict[str, Any] = {"width": self.width, "stride": self.stride, "act": self.act,
                               "se": self.se}
        for name in ("widths", "depths", "expands"):
            if getattr(self, name):
                out[name] = [_num(v) for v in getattr(self, name)]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StageSpec":
        data = dict(data)
        for name in ("widths", "depths", "expands"):
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)


@dataclass(frozen=True)
class Arch:
    """One network of a search space, in the JSON form ``{"r", "d", "k", "e"}`` (plus
    ``"w"`` in a space with elastic widths).

    ``k`` and ``e`` hold ``max_depth`` slots per stage; slots beyond a stage's depth are
    unused. In a multi-path space a ``k`` slot is the tuple of kernel sizes whose paths the
    layer sums. ``w`` holds each stage's output width in channels; it is empty in a space of
    fixed widths, so those archs (and their keys) are what they always were. Make archs with
    :meth:`SearchSpace.arch` (validated and canonical); a raw ``Arch(...)`` is not checked.
    """

    r: int
    d: tuple[int, ...]
    k: tuple[int | tuple[int, ...], ...]
    e: tuple[float, ...]
    w: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        out = {"r": int(self.r), "d": [int(v) for v in self.d],
               "k": [[int(p) for p in v] if isinstance(v, tuple) else int(v) for v in self.k],
               "e": [_num(v) for v in self.e]}
        if self.w:
            out["w"] = [int(v) for v in self.w]
        return out

    def to_ofa(self) -> dict[str, Any]:
        """Once-for-All's spelling (``ks``/``e``/``d`` plus ``r``)."""
        if self.w or any(isinstance(v, tuple) for v in self.k):
            raise SpaceError("Once-for-All's arch format has no widths and no path sets; "
                             "write this arch in hwnas's JSON form")
        out = self.to_dict()
        return {"ks": out["k"], "e": out["e"], "d": out["d"], "r": out["r"]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @property
    def key(self) -> str:
        """A stable hash of the canonical JSON form (use archs from :meth:`SearchSpace.arch`)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SearchSpace:
    """An elastic MobileNetV3-style space (defaults: Once-for-All's, at width 1.0)."""

    name: str = "default"
    in_channels: int = 3
    stem_width: int = 16
    first_block_width: int = 16
    first_block_act: str = "relu"
    stem_act: str = "hswish"
    stages: tuple[StageSpec, ...] = (
        StageSpec(24, 2, "relu", False),
        StageSpec(40, 2, "relu", True),
        StageSpec(80, 2, "hswish", False),
        StageSpec(112, 1, "hswish", True),
        StageSpec(160, 2, "hswish", True),
    )
    depths: tuple[int, ...] = (2, 3, 4)
    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[float, ...] = (3, 4, 6)
    resolutions: tuple[int, ...] = (160, 176, 192, 208, 224)
    final_expand_width: int = 960
    feature_mix_width: int = 1280
    num_classes: int = 1000
    width_mult: float = 1.0
    se_reduction: int = 4
    width_mults: tuple[float, ...] = ()   # elastic stage widths: these multiples of each base
    max_paths: int = 1                    # > 1: a layer sums 1..max_paths kernel paths (MixPath)

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise SpaceError(f"search space {self.name!r}: {what}")

        need(len(self.stages) >= 1, "needs at least one stage")
        for name in ("depths", "kernels", "expands", "resolutions"):
            values = getattr(self, name)
            need(len(values) >= 1, f"{name} must not be empty")
            need(len(set(values)) == len(values), f"{name} has repeated values: {values}")
            need(list(values) == sorted(values), f"{name} must be sorted ascending: {values}")
            need(all(v > 0 for v in values), f"{name} must be positive: {values}")
        need(all(int(k) == k and k % 2 == 1 for k in self.kernels),
             f"kernels must be odd integers, got {self.kernels}")
        need(all(int(d) == d for d in self.depths), f"depths must be integers: {self.depths}")
        for i, s in enumerate(self.stages):
            need(s.stride in (1, 2), f"stage {i} stride must be 1 or 2, got {s.stride}")
            need(s.act in ACTIVATIONS, f"stage {i} act must be one of {ACTIVATIONS}, got {s.act!r}")
            need(s.width > 0, f"stage {i} width must be positive, got {s.width}")
            for name in ("widths", "depths", "expands"):
                values = getattr(s, name)
                need(list(values) == sorted(set(values)) and all(v > 0 for v in values),
                     f"stage {i} {name} must be positive, distinct and ascending: {values}")
            need(all(int(d) == d for d in s.depths), f"stage {i} depths must be integers")
        need(list(self.width_mults) == sorted(set(self.width_mults))
             and all(m > 0 for m in self.width_mults),
             f"width_mults must be positive, distinct and ascending: {self.width_mults}")
        need(1 <= self.max_paths <= len(self.kernels),
             f"max_paths must be in 1..{len(self.kernels)} (the number of kernels), "
             f"got {self.max_paths}")
        need(self.width_mult > 0, f"width_mult must be positive, got {self.width_mult}")
        need(self.num_classes > 0, f"num_classes must be positive, got {self.num_classes}")
        for act in (self.stem_act, self.first_block_act):
            need(act in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {act!r}")

    # ----------------------------------------------------------------- presets & identity
    @classmethod
    def default(cls, width_mult: float = 1.0) -> "SearchSpace":
        """Once-for-All's MobileNetV3 space (width 1.0, or 1.2)."""
        name = "default" if width_mult == 1.0 else f"default-w{width_mult:g}"
        return cls(name=name, width_mult=width_mult)

    @classmethod
    def attentive(cls) -> "SearchSpace":
        """AttentiveNAS's space (Wang et al., CVPR 2021; its released training config): six
        searchable stages with their own widths, depths and expands, kernels 3/5, swish,
        192-288 px. Fixed here: the stem and the first block at their widest (24; AttentiveNAS
        searches 16/24 and 1-2 first blocks of kernel 3/5) and the head (final expand 6x224,
        feature mix 1984 of 1792/1984)."""
        sw = "swish"
        return cls(
            name="attentive", stem_width=24, first_block_width=24, first_block_act=sw,
            stem_act=sw,
            stages=(StageSpec(32, 2, sw, False, (24, 32), (3, 4, 5), (4, 5, 6)),
                    StageSpec(40, 2, sw, True, (32, 40), (3, 4, 5, 6), (4, 5, 6)),
                    StageSpec(72, 2, sw, False, (64, 72), (3, 4, 5, 6), (4, 5, 6)),
                    StageSpec(128, 1, sw, True, (112, 120, 128), (3, 4, 5, 6, 7, 8),
                              (4, 5, 6)),
                    StageSpec(216, 2, sw, True, (192, 200, 208, 216), (3, 4, 5, 6, 7, 8),
                              (6,)),
                    StageSpec(224, 1, sw, True, (216, 224), (1, 2), (6,))),
            depths=(1, 2, 3, 4, 5, 6, 7, 8), kernels=(3, 5), expands=(4, 5, 6),
            resolutions=(192, 224, 256, 288), final_expand_width=1344,
            feature_mix_width=1984)

    @classmethod
    def attentive_small(cls) -> "SearchSpace":
        """AttentiveNAS's structure at the small space's size (for tests and the embedded
        digits): per-stage width choices (two to four each, as AttentiveNAS has), depths,
        kernels 3/5 and expands 4-6 (6 only in the last two stages), swish, 32-48 px."""
        sw = "swish"
        return cls(
            name="attentive-small", stem_width=8, first_block_width=8, first_block_act=sw,
            stem_act=sw,
            stages=(StageSpec(24, 2, sw, False, (16, 24), (1, 2, 3), (4, 5, 6)),
                    StageSpec(32, 2, sw, True, (24, 32), (1, 2, 3), (4, 5, 6)),
                    StageSpec(40, 2, sw, False, (32, 40), (1, 2, 3), (4, 5, 6)),
                    StageSpec(56, 1, sw, True, (40, 48, 56), (1, 2, 3, 4), (4, 5, 6)),
                    StageSpec(88, 2, sw, True, (64, 72, 80, 88), (1, 2, 3, 4), (6,)),
                    StageSpec(96, 1, sw, True, (88, 96), (1, 2), (6,))),
            depths=(1, 2, 3, 4), kernels=(3, 5), expands=(4, 5, 6),
            resolutions=(32, 40, 48), final_expand_width=576, feature_mix_width=256,
            num_classes=10)

    @classmethod
    def mixpath(cls) -> "SearchSpace":
        """A MixPath space (Chu et al., ICCV 2023) on Once-for-All's MobileNetV3 structure:
        every searchable layer sums the depthwise paths of a non-empty set of up to two
        kernels of 3/5/7/9 inside one inverted bottleneck (expand 3 or 6), and the sum goes
        through a shadow BN, one per number of active paths (``hwnas train
        --no-shadow-bn`` for one BN). MixPath's own layer (its released CIFAR supernet)
        differs: each path has its own BN and activation, the shadow BN follows the
        projection, and each expand ratio has weights of its own; here the paths share one
        BN, OFA-style blocks share weights across expands."""
        return dataclasses.replace(cls.default(), name="mixpath", kernels=(3, 5, 7, 9),
                                   expands=(3, 6), max_paths=2)

    @classmethod
    def mixpath_small(cls) -> "SearchSpace":
        """``mixpath`` at the small space's size (tests, the embedded digits)."""
        return dataclasses.replace(cls.small(), name="mixpath-small", kernels=(3, 5, 7, 9),
                                   expands=(3, 6), max_paths=2)

    @classmethod
    def small(cls) -> "SearchSpace":
        """A small space (32-48 px, narrow) with the default's structure, for tests and the
        quickstart; 10 classes to fit the embedded digits data set."""
        return cls(
            name="small", stem_width=8, first_block_width=8,
            stages=(StageSpec(16, 2, "relu", False), StageSpec(24, 2, "relu", True),
                    StageSpec(32, 2, "hswish", False), StageSpec(48, 1, "hswish", True),
                    StageSpec(64, 2, "hswish", True)),
            resolutions=(32, 40, 48), final_expand_width=192, feature_mix_width=256,
            num_classes=10,
        )

    def to_dict(self) -> dict[str, Any]:
        """Every parameter, JSON-ready (stored in LUTs, predictors and checkpoints)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["stages"] = [s.to_dict() for s in self.stages]
        for name in ("depths", "kernels", "expands", "resolutions", "width_mults"):
            out[name] = [_num(v) for v in out[name]]
        # parameters added later are written only when set, so older spaces keep their ids
        if not self.width_mults:
            del out["width_mults"]
        if self.max_paths == 1:
            del out["max_paths"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSpace":
        data = dict(data)
        try:
            data["stages"] = tuple(StageSpec.from_dict(s) for s in data["stages"])
            for name in ("depths", "kernels", "expands", "resolutions", "width_mults"):
                if name in data:
                    data[name] = tuple(data[name])
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise SpaceError(f"not a search space description: {exc}") from None

    @property
    def id(self) -> str:
        """A short hash of every parameter: two spaces with one id build the same networks."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def weights_id(self) -> str:
        """A short hash of what decides the supernet's weights: every parameter but the
        name and the resolutions (the head pools globally, so one set of weights serves
        every input size). A checkpoint loads into any space with the same weights id."""
        d = self.to_dict()
        del d["name"], d["resolutions"]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def with_resolutions(self, resolutions: Sequence[int]) -> "SearchSpace":
        """The same space at other input resolutions, named ``<name>@<resolutions>``
        (e.g. ``default-w1.2@128-224:4``, Once-for-All's training range)."""
        rs = tuple(sorted({int(r) for r in resolutions}))
        if rs == tuple(self.resolutions):
            return self
        base = self.name.partition("@")[0]
        return dataclasses.replace(self, name=f"{base}@{format_resolutions(rs)}",
                                   resolutions=rs)

    # ------------------------------------------------------------------- derived widths
    def _w(self, width: int) -> int:
        return make_divisible(width * self.width_mult, 8)

    @property
    def stem_channels(self) -> int:
        return self._w(self.stem_width)

    @property
    def first_block_channels(self) -> int:
        return self._w(self.first_block_width)

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Each stage's widest output (the supernet's width)."""
        return tuple(max(self.width_choices(s)) for s in range(self.n_stages))

    def width_choices(self, stage: int) -> tuple[int, ...]:
        """The output widths (channels) stage ``stage`` may take, ascending."""
        spec = self.stages[stage]
        if spec.widths:
            return tuple(self._w(w) for w in spec.widths)
        if self.width_mults:
            return tuple(sorted({self._w(spec.width * m) for m in self.width_mults}))
        return (self._w(spec.width),)

    @property
    def elastic_widths(self) -> bool:
        """Whether archs choose stage widths (and carry ``w``)."""
        return any(len(self.width_choices(s)) > 1 for s in range(self.n_stages))

    def stage_depths(self, stage: int) -> tuple[int, ...]:
        return self.stages[stage].depths or self.depths

    def stage_expands(self, stage: int) -> tuple[float, ...]:
        return self.stages[stage].expands or self.expands

    @property
    def kernel_choices(self) -> tuple:
        """What a layer's kernel gene chooses: a kernel size, or in a multi-path space a
        non-empty set of up to ``max_paths`` kernel sizes (a sorted tuple)."""
        if self.max_paths == 1:
            return self.kernels
        return tuple(c for n in range(1, self.max_paths + 1)
                     for c in itertools.combinations(self.kernels, n))

    @property
    def final_expand_channels(self) -> int:
        return self._w(self.final_expand_width)

    @property
    def feature_mix_channels(self) -> int:
        return self._w(self.feature_mix_width)

    @property
    def n_stages(self) -> int:
        return len(self.stages)

    @property
    def max_depth(self) -> int:
        return max(max(self.stage_depths(s)) for s in range(self.n_stages))

    @property
    def n_blocks(self) -> int:
        """Slots in ``k`` and ``e``: ``max_depth`` per stage."""
        return self.n_stages * self.max_depth

    def mid_channels(self, cin: int, expand: float) -> int:
        """Middle (expanded) width of a block: the channel count, not the ratio."""
        return make_divisible(round(cin * expand), 8)

    def se_channels(self, mid: int) -> int:
        return make_divisible(mid // self.se_reduction, 8)

    def block_input_channels(self, stage: int, index: int, widths: Sequence[int] = ()) -> int:
        """Input channels of a block; ``widths``: the arch's stage widths (default: the
        widest, the supernet's)."""
        widths = widths or self.stage_widths
        if index > 0:
            return widths[stage]
        return widths[stage - 1] if stage > 0 else self.first_block_channels

    def arch_widths(self, arch: Arch) -> tuple[int, ...]:
        """The stage output widths of ``arch`` (the only ones in a fixed-width space)."""
        return arch.w or self.stage_widths

    def feature_size(self, resolution: int, stage: int | None = None) -> int:
        """Input height/width of ``stage`` (of the final expand when ``stage`` is None)."""
        hw = _conv_out(resolution, 2)  # stem
        stop = self.n_stages if stage is None else stage
        for s in self.stages[:stop]:
            hw = _conv_out(hw, s.stride)
        return hw

    # ------------------------------------------- writing archs down (hwnas.encoding)
    def arch(self, obj: Any = None, /, **fields: Any) -> Arch:
        """Validate and canonicalise an arch: an :class:`Arch`, ``{"r", "d", "k", "e"}``,
        Once-for-All's dict, or the same as keywords (:func:`hwnas.encoding.parse`)."""
        return encoding.parse(self, obj, **fields)

    def at_resolution(self, arch: Arch, r: int) -> Arch:
        """The same network at input size ``r`` (checked: ``r`` must be in the space)."""
        return self.arch(dataclasses.replace(arch, r=r))

    def load_arch(self, path: str | Path) -> Arch:
        """Read an arch from a JSON file (the JSON form or OFA's)."""
        return encoding.load(self, path)

    @property
    def n_var(self) -> int:
        """Length of the integer encoding: per stage [depth, kernels, expands], then r."""
        return encoding.n_var(self)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive lower and upper bound of every gene (for pymoo)."""
        return encoding.bounds(self)

    def encode(self, arch: Arch | Mapping) -> np.ndarray:
        """Integer vector of an arch; genes past a stage's depth are zero."""
        return encoding.encode(self, arch)

    def decode(self, x: Sequence[int] | np.ndarray) -> Arch:
        """Arch of an integer vector (any vector within :attr:`bounds` is a valid arch)."""
        return encoding.decode(self, x)

    def canonical_vector(self, x: Sequence[int] | np.ndarray) -> np.ndarray:
        """Zero the genes past each stage's depth (do this before hashing or fitting)."""
        return encoding.canonical(self, encoding.check_vector(self, x)[None])[0]

    def sample(self, n: int = 1, seed: int | np.random.Generator | None = None) -> list[Arch]:
        """``n`` archs, every choice drawn uniformly and independently (OFA's sampler)."""
        rng = np.random.default_rng(seed)
        return [self.decode(x) for x in encoding.sample(self, n, rng)]

    def mutate(self, arch: Arch, seed: int | np.random.Generator | None = None,
               prob: float | None = None) -> Arch:
        """Redraw each gene with probability ``prob`` (default 1/n_var) to another value."""
        rng = np.random.default_rng(seed)
        rate = 1.0 / self.n_var if prob is None else prob
        x = encoding.mutate(self, self.encode(arch)[None], rate, rng)
        return self.decode(encoding.canonical(self, x)[0])

    def crossover(self, a: Arch, b: Arch,
                  seed: int | np.random.Generator | None = None) -> Arch:
        """Uniform crossover of two archs' encodings (a child is always valid)."""
        rng = np.random.default_rng(seed)
        child, _ = encoding.crossover(self.encode(a)[None], self.encode(b)[None], rng)
        return self.decode(encoding.canonical(self, child)[0])

    def arch_name(self, arch: Arch) -> str:
        """Short readable name, e.g. ``r224-k3e6.k5e4-k7e3.k3e3.k5e6-...``; safe in file
        names, read back by :meth:`parse_name`."""
        return encoding.name(self, arch)

    def parse_name(self, text: str) -> Arch:
        """The arch an :meth:`arch_name` names."""
        return encoding.parse_name(self, text)

    # ------------------------------------------------------------------------ geometry
    def smallest(self) -> Arch:
        """Least depth, smallest kernel and expand, lowest resolution."""
        return self.decode(np.zeros(self.n_var, dtype=np.int64))

    def largest(self) -> Arch:
        """Most depth, largest kernel and expand, highest resolution."""
        return self.decode(self.bounds[1])

    def size(self) -> int:
        """The exact number of distinct networks (canonical archs) in the space."""
        total = len(self.resolutions)
        for s in range(self.n_stages):
            per_block = len(self.kernel_choices) * len(self.stage_expands(s))
            total *= sum(per_block ** d for d in self.stage_depths(s)) \
                * len(self.width_choices(s))
        return total

    def active_blocks(self, arch: Arch) -> Iterator[tuple[int, int, int, float]]:
        """(stage, index in stage, kernel, expand) of every block the arch uses."""
        md = self.max_depth
        for s, depth in enumerate(arch.d):
            for b in range(depth):
                yield s, b, arch.k[s * md + b], arch.e[s * md + b]


def kernel_paths(choice: int | tuple[int, ...]) -> tuple[int, ...]:
    """The kernel sizes of a kernel choice: a path set as is, a lone size as one path."""
    return choice if isinstance(choice, tuple) else (choice,)


def _conv_out(hw: int, stride: int) -> int:
    """Output size of a 'same'-padded odd-kernel conv: ceil(hw / stride)."""
    return math.ceil(hw / stride)


# Presets by name; a new one is ``SPACES.register("name", factory)``.
SPACES: Registry = Registry("search space", SpaceError)
SPACES.register("default", SearchSpace.default)
SPACES.register("default-w1.2", lambda: SearchSpace.default(1.2))
SPACES.register("small", SearchSpace.small)
SPACES.register("attentive", SearchSpace.attentive)
SPACES.register("attentive-small", SearchSpace.attentive_small)
SPACES.register("mixpath", SearchSpace.mixpath)
SPACES.register("mixpath-small", SearchSpace.mixpath_small)
# Where each preset comes from (``hwnas space list``).
PRESET_ORIGINS = {
    "default": "Once-for-All's MobileNetV3 space (Cai et al., ICLR 2020) at width 1.0",
    "default-w1.2": "the same at width 1.2, as OFA's released w1.2 supernet",
    "small": "the default's structure, narrow, 32-48 px, 10 classes: tests, the quickstart",
    "attentive": "AttentiveNAS (Wang et al., CVPR 2021): widths, depths, expands per stage",
    "attentive-small": "AttentiveNAS's structure at the small space's size",
    "mixpath": "MixPath (Chu et al., ICCV 2023) on OFA's structure: 1-2 summed kernel "
               "paths of 3/5/7/9, shadow BN",
    "mixpath-small": "mixpath at the small space's size",
}
# The input sizes Once-for-All's released supernets were trained at.
OFA_RESOLUTIONS = tuple(range(128, 225, 4))
RESOLUTION_SYNTAX = "comma-separated sizes and ranges A-B:STEP, e.g. 128-224:4 or 160,192"


def parse_resolutions(text: str) -> tuple[int, ...]:
    """Resolutions from ``"128-224:4"``, ``"160,176,192"`` or a mix of both."""
    out: set[int] = set()
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        span, _, step = item.partition(":")
        lo, dash, hi = span.partition("-")
        try:
            if dash:
                a, b, s = int(lo), int(hi), int(step or 1)
                if a > b or s < 1:
                    raise ValueError
                out.update(range(a, b + 1, s))
            elif step:
                raise ValueError
            else:
                out.add(int(span))
        except ValueError:
            raise SpaceError(f"resolutions {text!r}: cannot read {item!r}; use "
                             f"{RESOLUTION_SYNTAX}") from None
    if not out or min(out) < 1:
        raise SpaceError(f"resolutions {text!r} name no positive size; use "
                         f"{RESOLUTION_SYNTAX}")
    return tuple(sorted(out))


def format_resolutions(resolutions: Sequence[int]) -> str:
    """The short form :func:`parse_resolutions` reads: evenly spaced runs of three or more
    as ranges, the rest listed (``128-224:4,260``)."""
    rs = sorted({int(r) for r in resolutions})
    parts, i = [], 0
    while i < len(rs):
        j = i + 1
        if j < len(rs):
            step = rs[j] - rs[i]
            while j + 1 < len(rs) and rs[j + 1] - rs[j] == step:
                j += 1
        if j - i >= 2:
            parts.append(f"{rs[i]}-{rs[j]}:{step}")
            i = j + 1
        else:
            parts.append(str(rs[i]))
            i += 1
    return ",".join(parts)


def get_space(space: str | SearchSpace) -> SearchSpace:
    """A space by preset name (``default``, ``default-w1.2``, ``small``), optionally at
    other resolutions (``default-w1.2@128-224:4``), or as given."""
    if isinstance(space, SearchSpace):
        return space
    base, at, res = str(space).partition("@")
    if base not in SPACES:
        raise SpaceError(f"unknown search space {space!r}; known: {sorted(SPACES)}, each "
                         f"optionally with @RESOLUTIONS ({RESOLUTION_SYNTAX})")
    preset = SPACES.create(base)
    return preset.with_resolutions(parse_resolutions(res)) if at else preset
