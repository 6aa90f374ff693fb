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

ACTIVATIONS = ("relu", "hswish")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` (never more than 10% down)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return int(new)


@dataclass(frozen=True)
class StageSpec:
    """One stage of elastic blocks: output width, stride of its first block, activation, SE."""

    width: int
    stride: int
    act: str
    se: bool


@dataclass(frozen=True)
class Arch:
    """One network of a search space, in the JSON form ``{"r", "d", "k", "e"}``.

    ``k`` and ``e`` hold ``max_depth`` slots per stage; slots beyond a stage's depth are
    unused. Make archs with :meth:`SearchSpace.arch` (validated and canonical); a raw
    ``Arch(...)`` is not checked.
    """

    r: int
    d: tuple[int, ...]
    k: tuple[int, ...]
    e: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"r": int(self.r), "d": [int(v) for v in self.d], "k": [int(v) for v in self.k],
                "e": [_num(v) for v in self.e]}

    def to_ofa(self) -> dict[str, Any]:
        """Once-for-All's spelling (``ks``/``e``/``d`` plus ``r``)."""
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
        out["stages"] = [dataclasses.asdict(s) for s in self.stages]
        for name in ("depths", "kernels", "expands", "resolutions"):
            out[name] = [_num(v) for v in out[name]]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSpace":
        data = dict(data)
        try:
            data["stages"] = tuple(StageSpec(**s) for s in data["stages"])
            for name in ("depths", "kernels", "expands", "resolutions"):
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
        return tuple(self._w(s.width) for s in self.stages)

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
        return max(self.depths)

    @property
    def n_blocks(self) -> int:
        """Slots in ``k`` and ``e``: ``max_depth`` per stage."""
        return self.n_stages * self.max_depth

    def mid_channels(self, cin: int, expand: float) -> int:
        """Middle (expanded) width of a block: the channel count, not the ratio."""
        return make_divisible(round(cin * expand), 8)

    def se_channels(self, mid: int) -> int:
        return make_divisible(mid // self.se_reduction, 8)

    def block_input_channels(self, stage: int, index: int) -> int:
        if index > 0:
            return self.stage_widths[stage]
        return self.stage_widths[stage - 1] if stage > 0 else self.first_block_channels

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
        per_block = len(self.kernels) * len(self.expands)
        per_stage = sum(per_block ** d for d in self.depths)
        return per_stage ** self.n_stages * len(self.resolutions)

    def active_blocks(self, arch: Arch) -> Iterator[tuple[int, int, int, float]]:
        """(stage, index in stage, kernel, expand) of every block the arch uses."""
        md = self.max_depth
        for s, depth in enumerate(arch.d):
            for b in range(depth):
                yield s, b, arch.k[s * md + b], arch.e[s * md + b]


def _conv_out(hw: int, stride: int) -> int:
    """Output size of a 'same'-padded odd-kernel conv: ceil(hw / stride)."""
    return math.ceil(hw / stride)


# Presets by name; a new one is ``SPACES.register("name", factory)``.
SPACES: Registry = Registry("search space", SpaceError)
SPACES.register("default", SearchSpace.default)
SPACES.register("default-w1.2", lambda: SearchSpace.default(1.2))
SPACES.register("small", SearchSpace.small)
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
