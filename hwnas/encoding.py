"""Writing archs down: parsing (hwnas's JSON, Once-for-All's dict, block-string names) and
the integer encoding a search works on.

The encoding of a space is, per stage, ``[depth, max_depth kernel indices, max_depth
expand indices]``, then (elastic widths only) one width index per stage, then the
resolution index. Indices are into the stage's own choices where a stage has them, and a
kernel index into ``space.kernel_choices`` (path sets in a multi-path space). It has one
canonical form (:func:`canonical`: genes past a stage's depth are zero, the resolution gene
on an allowed value), and one sampler, one mutation and one crossover on it
(:func:`sample`, :func:`mutate`, :func:`crossover`; :func:`sample_spread` for
measuring), which both
:class:`~hwnas.space.SearchSpace` and the search use, so a vector any of them makes is a
valid arch and equal archs have equal vectors.

Functions take the space first; :class:`~hwnas.space.SearchSpace` exposes each as a method
(``space.arch``, ``space.encode``, ``space.sample``, ...).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from hwnas.errors import ArchError, read_json

if TYPE_CHECKING:
    from hwnas.space import Arch, SearchSpace


def _is_number(v: Any) -> bool:
    """An int or float (numpy's too), not a bool."""
    return isinstance(v, (int, float, np.integer, np.floating)) and \
        not isinstance(v, (bool, np.bool_))


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


# ------------------------------------------------------------------------- parsing
def parse(space: SearchSpace, obj: Any = None, /, **fields: Any) -> Arch:
    """Validate and canonicalise an arch.

    Accepts an :class:`Arch`, the JSON form ``{"r", "d", "k", "e"}``, Once-for-All's dict
    (``ks``, ``e``, ``d`` with ``r`` or ``image_size``), or the same as keywords. Raises
    :class:`ArchError` naming the field, the value and what is allowed.
    """
    from hwnas.space import Arch

    if obj is None:
        obj = fields
    elif fields:
        raise ArchError("give an arch either as one object or as keywords, not both")
    if isinstance(obj, Arch):
        obj = obj.to_dict()
    if not isinstance(obj, Mapping):
        raise ArchError(f"an arch must be a JSON object with keys r, d, k, e; got "
                        f"{type(obj).__name__}")
    keys = set(obj)
    if not all(isinstance(k, str) for k in keys):
        raise ArchError(f"arch keys must be strings, got {sorted(map(repr, keys))}")
    ofa = "ks" in keys
    allowed = {"ks", "e", "d", "r", "image_size"} if ofa else {"r", "d", "k", "e"}
    if space.elastic_widths and not ofa:
        allowed.add("w")
    unknown = keys - allowed
    if unknown:
        extra = "" if space.elastic_widths or "w" not in unknown else \
            f" (space {space.name!r} has fixed stage widths, so an arch has no 'w')"
        raise ArchError(f"unknown arch key(s) {sorted(unknown)}; allowed keys are "
                        f"{sorted(allowed)}{extra}")
    if ofa:
        if space.elastic_widths or space.max_paths > 1:
            keys_needed = "r, d, k, e" + (", w" if space.elastic_widths else "")
            raise ArchError(f"space {space.name!r} has elastic widths or path sets, which "
                            f"Once-for-All's arch format cannot write; use hwnas's JSON "
                            f"form with keys {keys_needed}")
        if "r" in keys and "image_size" in keys:
            raise ArchError("give the resolution once, as 'r' or 'image_size', not both")
        res_key = "r" if "r" in keys else "image_size"
        required = {"ks": "ks", "e": "e", "d": "d", res_key: res_key}
    else:
        required = {"r": "r", "d": "d", "k": "k", "e": "e"}
        if space.elastic_widths:
            required["w"] = "w"
    missing = [k for k in required if k not in keys]
    if missing:
        raise ArchError(f"arch is missing key(s) {missing}; an arch needs "
                        f"{sorted(required)}")
    res_key = "r" if "r" in keys else "image_size"
    r = obj[res_key]
    if isinstance(r, (list, tuple)) and len(r) == 1:  # OFA sometimes writes [224]
        r = r[0]
    r = _check_choice(res_key, r, space.resolutions)
    d = _check_list(space, "d", obj["d"], space.n_stages)
    d = tuple(_check_choice(f"d[{i}]", v, space.stage_depths(i)) for i, v in enumerate(d))
    k_name = "ks" if ofa else "k"
    k_raw = _check_list(space, k_name, obj[k_name], space.n_blocks)
    if space.max_paths > 1:
        k_raw = [_path_set(space, f"{k_name}[{i}]", v) for i, v in enumerate(k_raw)]
    e_raw = _check_list(space, "e", obj["e"], space.n_blocks)
    k = _check_slots(space, k_name, k_raw, d, lambda s: space.kernel_choices)
    e = _check_slots(space, "e", e_raw, d, space.stage_expands)
    w: tuple = ()
    if space.elastic_widths:
        w = tuple(_check_choice(f"w[{i}]", v, space.width_choices(i))
                  for i, v in enumerate(_check_list(space, "w", obj["w"], space.n_stages)))
    return Arch(r=r, d=d, k=k, e=e, w=w)


def _path_set(space: SearchSpace, name: str, value: Any) -> Any:
    """A multi-path layer's kernels as the sorted tuple the space lists (a lone kernel size
    is a one-path set); anything else is returned as is for the choice check to refuse."""
    if _is_number(value):
        return value if value == 0 else (value,)
    if isinstance(value, (list, tuple)) and value and all(_is_number(v) for v in value):
        if len(set(value)) != len(value):
            raise ArchError(f"arch field {name!r} = {list(value)} repeats a kernel; a path "
                            f"set names each kernel size once")
        return tuple(sorted(int(v) if float(v).is_integer() else v for v in value))
    raise ArchError(f"arch field {name!r} must be a kernel size or a list of them, got "
                    f"{value!r:.60}; allowed: {_show(space.kernel_choices)}")


def _show(choices: Sequence) -> list:
    return [list(c) if isinstance(c, tuple) else _num(c) for c in choices]


def load_many(space: SearchSpace, path: str | Path) -> list[Arch]:
    """Every arch of a JSON file: one arch, or a non-empty list of them; an entry may be
    wrapped as ``{"arch": ...}`` (as ``pareto.json`` writes them). Every entry is checked,
    and a bad one is named by its index."""
    obj = read_json(path, ArchError, "arch file")
    items = obj if isinstance(obj, list) else [obj]
    if not items:
        raise ArchError(f"{path} holds an empty list; it needs at least one arch")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Mapping) and set(item) >= {"arch"} and isinstance(item["arch"],
                                                                              Mapping):
            item = item["arch"]
        try:
            out.append(parse(space, item))
        except ArchError as exc:
            where = f"{path}" if not isinstance(obj, list) else f"{path} entry {i}"
            raise ArchError(f"{where}: {exc}") from None
    return out


def load(space: SearchSpace, path: str | Path) -> Arch:
    """The one arch of a JSON file (the JSON form or OFA's; a one-entry list too)."""
    archs = load_many(space, path)
    if len(archs) > 1:
        raise ArchError(f"{path} holds {len(archs)} archs; give a file with one (e.g. a "
                        f"run's best.json, or one entry of its pareto.json)")
    return archs[0]


def _check_list(space: SearchSpace, name: str, value: Any, length: int) -> list:
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ArchError(f"arch field {name!r} must be a list of {length} numbers, got "
                        f"{type(value).__name__} {value!r:.60}")
    value = list(value)
    if len(value) != length:
        raise ArchError(f"arch field {name!r} must have {length} entries for space "
                        f"{space.name!r}, got {len(value)}")
    return value


def _check_choice(name: str, value: Any, choices: Sequence) -> Any:
    if not (_is_number(value) or isinstance(value, tuple)):
        raise ArchError(f"arch field {name!r} must be a number, got "
                        f"{type(value).__name__} {value!r:.60}; allowed: {_show(choices)}")
    for c in choices:
        if value == c:
            return c
    shown = list(value) if isinstance(value, tuple) else value
    raise ArchError(f"arch field {name!r} = {shown!r} is not allowed; allowed: "
                    f"{_show(choices)}")


def _check_slots(space: SearchSpace, name: str, values: list, d: tuple[int, ...],
                 choices_of) -> tuple:
    """Check active slots against ``choices_of(stage)``; unused slots may hold a choice or
    0 and become the stage's first choice."""
    out = []
    for s, depth in enumerate(d):
        choices = choices_of(s)
        for b in range(space.max_depth):
            i = s * space.max_depth + b
            v = values[i]
            if b < depth:
                out.append(_check_choice(f"{name}[{i}]", v, choices))
                continue
            if not (_is_number(v) and v == 0):
                _check_choice(f"{name}[{i}] (unused slot; 0 also allowed)", v, choices)
            out.append(choices[0])
    return tuple(out)


# --------------------------------------------------------------------------- names
_BLOCK = re.compile(r"k(\d+(?:\+\d+)*)e(\d+(?:\.\d+)?)")


def name(space: SearchSpace, arch: Arch) -> str:
    """Short readable name: resolution, then one group per stage of k<kernel>e<expand>
    blocks, e.g. ``r224-k3e6.k5e4-k7e3.k3e3.k5e6-...``; a path set is written ``k3+7``, and
    a stage's width leads its group as ``w<channels>``. Safe in file names; read back by
    :func:`parse_name`."""
    from hwnas.space import kernel_paths

    parts = [f"r{arch.r}"]
    groups: list[list[str]] = [[f"w{w}"] for w in arch.w] or \
        [[] for _ in range(space.n_stages)]
    for s, _, k, e in space.active_blocks(arch):
        groups[s].append(f"k{'+'.join(map(str, kernel_paths(k)))}e{_num(e)}")
    parts += [".".join(g) for g in groups]
    return "-".join(parts)


def parse_name(space: SearchSpace, text: str) -> Arch:
    """The arch a :func:`name` names (``parse_name(space, name(space, a)) == a``)."""
    parts = str(text).split("-")
    if len(parts) != space.n_stages + 1 or not re.fullmatch(r"r\d+", parts[0]):
        raise ArchError(f"arch name {text!r} must be r<resolution> and {space.n_stages} "
                        f"stage groups joined by '-', e.g. {name(space, space.smallest())!r}")
    d, k, e, w = [], [], [], []
    for s, group in enumerate(parts[1:]):
        if space.elastic_widths:
            width, _, group = group.partition(".")
            if not re.fullmatch(r"w\d+", width):
                raise ArchError(f"arch name {text!r}: stage {s} group must start with its "
                                f"width w<channels>, e.g. w{space.stage_widths[s]}")
            w.append(int(width[1:]))
        blocks = [m for m in _BLOCK.finditer(group)]
        if ".".join(m.group(0) for m in blocks) != group or not blocks:
            raise ArchError(f"arch name {text!r}: stage {s} group {group!r} is not blocks "
                            f"k<kernel>e<expand> joined by '.'")
        d.append(len(blocks))
        pad = space.max_depth - len(blocks)
        if pad < 0:
            raise ArchError(f"arch name {text!r}: stage {s} has {len(blocks)} blocks; "
                            f"allowed depths: {list(space.depths)}")
        k += [[int(p) for p in m.group(1).split("+")] if space.max_paths > 1
              else int(m.group(1)) for m in blocks] + [0] * pad
        e += [float(m.group(2)) for m in blocks] + [0] * pad
    if space.elastic_widths:
        return parse(space, r=int(parts[0][1:]), d=d, k=k, e=e, w=w)
    return parse(space, r=int(parts[0][1:]), d=d, k=k, e=e)


# ------------------------------------------------------------------------ encoding
def n_var(space: SearchSpace) -> int:
    """Length of the integer encoding: per stage [depth, kernels, expands], then one width
    gene per stage (only in a space with elastic widths), then r."""
    return space.n_stages * (1 + 2 * space.max_depth) + n_width_genes(space) + 1


def n_width_genes(space: SearchSpace) -> int:
    return space.n_stages if space.elastic_widths else 0


def width_gene(space: SearchSpace, stage: int) -> int:
    """Column of stage ``stage``'s width gene (elastic widths only)."""
    return space.n_stages * (1 + 2 * space.max_depth) + stage


def bounds(space: SearchSpace) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive lower and upper bound of every gene (for pymoo)."""
    xu = []
    for s in range(space.n_stages):
        xu += [len(space.stage_depths(s)) - 1] + [len(space.kernel_choices) - 1] \
            * space.max_depth + [len(space.stage_expands(s)) - 1] * space.max_depth
    xu += [len(space.width_choices(s)) - 1 for s in range(n_width_genes(space))]
    xu.append(len(space.resolutions) - 1)
    return np.zeros(n_var(space), dtype=np.int64), np.array(xu, dtype=np.int64)


def depth_table(space: SearchSpace) -> np.ndarray:
    """[S, max choices] depth of each stage's depth gene value (padded with its last)."""
    return _choice_table([space.stage_depths(s) for s in range(space.n_stages)])


def stage_depths(space: SearchSpace, X: np.ndarray) -> np.ndarray:
    """[n, S] depth of every stage of an encoding matrix."""
    table, step = depth_table(space), 1 + 2 * space.max_depth
    return np.stack([table[s][X[:, s * step]] for s in range(space.n_stages)], axis=1)


def width_table(space: SearchSpace) -> np.ndarray:
    """[S, max choices] channels of each stage's width gene value (padded with its last)."""
    return _choice_table([space.width_choices(s) for s in range(space.n_stages)])


def _choice_table(rows: list[tuple]) -> np.ndarray:
    n = max(len(r) for r in rows)
    return np.array([list(r) + [r[-1]] * (n - len(r)) for r in rows])


def stage_widths(space: SearchSpace, X: np.ndarray) -> np.ndarray:
    """[n, S] width gene of every stage of an encoding matrix (zeros without elastic widths)."""
    if not space.elastic_widths:
        return np.zeros((len(X), space.n_stages), dtype=np.int64)
    start = width_gene(space, 0)
    return X[:, start:start + space.n_stages]


def encode(space: SearchSpace, arch: Arch | Mapping) -> np.ndarray:
    """Integer vector of an arch; genes past a stage's depth are zero."""
    from hwnas.space import Arch

    if isinstance(arch, Arch):
        try:
            return _encode_fast(space, arch)
        except (KeyError, IndexError, TypeError):
            pass  # fall through to the full check, which names the bad field
    return _encode_fast(space, parse(space, arch))


def _encode_fast(space: SearchSpace, arch: Arch) -> np.ndarray:
    di, ki, ei, wi, ri = _index_maps(space)
    md = space.max_depth
    if len(arch.d) != space.n_stages or len(arch.k) != space.n_blocks \
            or len(arch.e) != space.n_blocks or len(arch.w) != n_width_genes(space):
        raise IndexError
    x = []
    for s, depth in enumerate(arch.d):
        x.append(di[s][depth])
        base = s * md
        x += [ki[arch.k[base + b]] if b < depth else 0 for b in range(md)]
        x += [ei[s][arch.e[base + b]] if b < depth else 0 for b in range(md)]
    x += [wi[s][w] for s, w in enumerate(arch.w)]
    x.append(ri[arch.r])
    return np.array(x, dtype=np.int64)


def _index_maps(space: SearchSpace) -> tuple:
    """Choice -> index per field (per stage for depths, expands and widths), cached on the
    (frozen) space for the hot encode path."""
    maps = space.__dict__.get("_maps")
    if maps is None:
        def index(c):
            return {v: i for i, v in enumerate(c) if not isinstance(v, bool)}

        stages = range(space.n_stages)
        maps = ([index(space.stage_depths(s)) for s in stages], index(space.kernel_choices),
                [index(space.stage_expands(s)) for s in stages],
                [index(space.width_choices(s)) for s in stages], index(space.resolutions))
        object.__setattr__(space, "_maps", maps)
    return maps


def decode(space: SearchSpace, x: Sequence[int] | np.ndarray) -> Arch:
    """Arch of an integer vector (any vector within :func:`bounds` is a valid arch)."""
    from hwnas.space import Arch

    x = check_vector(space, x)
    md, step = space.max_depth, 1 + 2 * space.max_depth
    kc = space.kernel_choices
    d, k, e = [], [], []
    for s in range(space.n_stages):
        g = x[s * step:(s + 1) * step]
        depths, expands = space.stage_depths(s), space.stage_expands(s)
        depth = depths[g[0]]
        d.append(depth)
        k += [kc[g[1 + b]] if b < depth else kc[0] for b in range(md)]
        e += [expands[g[1 + md + b]] if b < depth else expands[0] for b in range(md)]
    w = tuple(space.width_choices(s)[x[width_gene(space, s)]]
              for s in range(n_width_genes(space)))
    return Arch(r=space.resolutions[x[-1]], d=tuple(d), k=tuple(k), e=tuple(e), w=w)


def check_vector(space: SearchSpace, x: Any) -> np.ndarray:
    """``x`` as an int64 vector of the space's encoding; raises naming the bad gene."""
    arr = np.asarray(x)
    if arr.shape != (n_var(space),):
        raise ArchError(f"an encoding of space {space.name!r} must have shape "
                        f"({n_var(space)},), got {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ArchError(f"encoding genes must be whole numbers, got {arr.tolist()}")
    elif arr.dtype.kind not in "iu":
        raise ArchError(f"encoding genes must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    lo, hi = bounds(space)
    bad = np.flatnonzero((arr < lo) | (arr > hi))
    if bad.size:
        i = int(bad[0])
        raise ArchError(f"encoding gene {i} = {arr[i]} is out of range; allowed "
                        f"0..{hi[i]}")
    return arr


def resolution_genes(space: SearchSpace, resolutions: Sequence[int] = ()) -> np.ndarray:
    """The resolution genes a search may use (all of the space's when none are given)."""
    if not resolutions:
        return np.arange(len(space.resolutions))
    bad = [r for r in resolutions if r not in space.resolutions]
    if bad:
        raise ArchError(f"resolution(s) {bad} are not in space {space.name!r}; allowed: "
                        f"{list(space.resolutions)}")
    return np.array(sorted(space.resolutions.index(r) for r in set(resolutions)))


def canonical(space: SearchSpace, X: np.ndarray, r_genes: np.ndarray | None = None
              ) -> np.ndarray:
    """The canonical form of a batch of vectors: rounded into bounds, genes past each
    stage's depth zeroed, the resolution gene snapped to the nearest of ``r_genes``. Equal
    archs then have equal vectors (so duplicates are found) and every vector is valid."""
    X = np.asarray(np.round(X), dtype=np.int64).copy()
    lo, hi = bounds(space)
    X = np.clip(X, lo, hi)
    md, step = space.max_depth, 1 + 2 * space.max_depth
    depths = depth_table(space)
    slot = np.arange(md)
    for s in range(space.n_stages):
        d = depths[s][X[:, s * step]]
        past = slot[None, :] >= d[:, None]
        X[:, s * step + 1:s * step + 1 + md][past] = 0
        X[:, s * step + 1 + md:s * step + 1 + 2 * md][past] = 0
    if r_genes is not None:
        nearest = np.abs(X[:, -1][:, None] - r_genes[None, :]).argmin(1)
        X[:, -1] = r_genes[nearest]
    return X


# ----------------------------------------------------------------------- variation
def sample(space: SearchSpace, n: int, rng: np.random.Generator,
           r_genes: np.ndarray | None = None) -> np.ndarray:
    """``n`` canonical vectors, every gene drawn uniformly and independently (OFA's
    sampler): an (n, n_var) matrix."""
    lo, hi = bounds(space)
    return canonical(space, rng.integers(lo, hi + 1, size=(n, n_var(space))), r_genes)


def sample_spread(space: SearchSpace, n: int, rng: np.random.Generator,
                  r_genes: np.ndarray | None = None) -> np.ndarray:
    """``n`` canonical vectors whose sizes spread from the smallest net to the largest.

    Independent uniform genes pile sizes up in the middle: in the small space 1 net in 250
    has every stage at its least depth, yet a latency-bound search ends there. Here each
    vector draws one size level ``t ~ U(0, 1)`` and every gene ``Binomial(choices - 1,
    t)``: each gene on its own is still uniform over its choices (a beta-binomial with
    a = b = 1), but the genes of one vector lean the same way, so depth, kernel, expand and
    resolution sums reach their extremes as often as their middles (choices are listed in
    increasing size)."""
    lo, hi = bounds(space)
    t = rng.random((n, 1))
    X = lo[None, :] + rng.binomial((hi - lo)[None, :], np.broadcast_to(t, (n, len(lo))))
    return canonical(space, X, r_genes)


def mutate(space: SearchSpace, X: np.ndarray, rate: float, rng: np.random.Generator
           ) -> np.ndarray:
    """Redraw each gene with probability ``rate`` to a different value (not canonical:
    repair with :func:`canonical`)."""
    lo, hi = bounds(space)
    X = np.asarray(X, dtype=np.int64).copy()
    span = hi - lo + 1
    hit = (rng.random(X.shape) < rate) & (span > 1)[None, :]
    shift = rng.integers(1, np.maximum(span, 2)[None, :].repeat(len(X), 0))
    X[hit] = ((X - lo + shift) % span + lo)[hit]
    return X


def crossover(A: np.ndarray, B: np.ndarray, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """Uniform crossover of parent pairs (rows of ``A`` with rows of ``B``): each gene
    swapped with probability 1/2; two children per pair (not canonical: repair them)."""
    A, B = np.asarray(A), np.asarray(B)
    swap = rng.random(A.shape) < 0.5
    return np.where(swap, B, A), np.where(swap, A, B)


__all__ = ["bounds", "canonical", "check_vector", "crossover", "decode", "depth_table",
           "encode", "load", "load_many", "mutate", "n_var", "n_width_genes", "name", "parse",
           "parse_name", "resolution_genes", "sample", "sample_spread", "stage_depths",
           "stage_widths", "width_gene", "width_table"]
