"""Ops: the units a lookup table times, and analytic MACs/params.

A subnet decomposes into a list of :class:`OpSpec` (stem, first block, every active
MBConv block, final expand, feature mix, classifier). An op's fields are everything that
decides its latency, channel counts stored explicitly (``cin``, ``mid``, ``cout``) as well
as the expand ratio, so a key is never ambiguous; identical keys share one LUT row.
Counting is analytic (no forward pass) and vectorised over batches of archs, because a
search counts millions of candidates.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
from torch import nn

from hwnas import encoding
from hwnas.layers import Classifier, ConvBNAct, FeatureMix, MBConv
from hwnas.space import Arch, SearchSpace, _conv_out, _num, kernel_paths

if TYPE_CHECKING:
    from hwnas.display import Table

OP_KINDS = ("stem", "first", "mbconv", "final_expand", "feature_mix", "classifier")


@dataclass(frozen=True)
class OpSpec:
    """One op of a subnet with the input it sees. Hashable; ``key`` is a stable string."""

    kind: str
    hw: int
    cin: int
    cout: int
    mid: int = 0
    expand: float = 0
    kernel: int = 1
    stride: int = 1
    act: str = "none"
    se_mid: int = 0
    residual: bool = False
    paths: tuple[int, ...] = ()   # a multi-path block's kernel sizes (summed); () one path

    @property
    def key(self) -> str:
        """e.g. ``mbconv:56x24-72-40:k5s2:e3:relu:se24:res0`` (``...:res0:p3+7`` for a block
        that sums the depthwise paths of kernels 3 and 7)."""
        paths = f":p{'+'.join(map(str, self.paths))}" if self.paths else ""
        return (f"{self.kind}:{self.hw}x{self.cin}-{self.mid}-{self.cout}:k{self.kernel}"
                f"s{self.stride}:e{_num(self.expand)}:{self.act}:se{self.se_mid}"
                f":res{int(self.residual)}{paths}")

    @property
    def dw_kernels(self) -> tuple[int, ...]:
        """The depthwise kernel size of every path."""
        return self.paths or (self.kernel,)

    @property
    def out_hw(self) -> int:
        if self.kind in ("feature_mix", "classifier"):
            return 1
        return _conv_out(self.hw, self.stride)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of a batch-1 NCHW input."""
        return (1, self.cin, self.hw, self.hw)

    def row(self) -> dict:
        """Flat form for a DataFrame row (plus ``key``)."""
        out = asdict(self)
        out["expand"] = float(self.expand)
        del out["paths"]
        if self.paths:  # a column only where a table holds multi-path ops
            out["paths"] = "+".join(map(str, self.paths))
        out["key"] = self.key
        return out

    @classmethod
    def from_row(cls, row: dict) -> "OpSpec":
        fields = {f: row[f] for f in cls.__dataclass_fields__ if f != "paths"}
        for name in ("hw", "cin", "cout", "mid", "kernel", "stride", "se_mid"):
            fields[name] = int(fields[name])
        fields["residual"] = bool(fields["residual"])
        fields["expand"] = _num(fields["expand"])
        paths = row.get("paths")
        if isinstance(paths, str) and paths:
            fields["paths"] = tuple(int(k) for k in paths.split("+"))
        return cls(**fields)

    # ---------------------------------------------------------------- counting
    @property
    def macs(self) -> int:
        """Multiply-accumulates of Conv2d and Linear layers (BN and pooling excluded)."""
        ho = self.out_hw
        if self.kind in ("stem",):
            return ho * ho * self.cout * self.cin * self.kernel ** 2
        if self.kind in ("first", "mbconv"):
            macs = self.hw * self.hw * self.cin * self.mid if self.kind == "mbconv" else 0
            macs += ho * ho * self.mid * sum(k * k for k in self.dw_kernels)
            macs += 2 * self.mid * self.se_mid
            return macs + ho * ho * self.mid * self.cout
        if self.kind == "final_expand":
            return self.hw * self.hw * self.cin * self.cout
        return self.cin * self.cout  # feature_mix (on the pooled 1x1 map), classifier

    @property
    def params(self) -> int:
        """Trainable parameters (BatchNorm's weight and bias counted, running stats not)."""
        if self.kind == "stem":
            return self.cout * self.cin * self.kernel ** 2 + 2 * self.cout
        if self.kind in ("first", "mbconv"):
            n = self.cin * self.mid + 2 * self.mid if self.kind == "mbconv" else 0
            n += self.mid * sum(k * k for k in self.dw_kernels) + 2 * self.mid
            if self.se_mid:
                n += 2 * self.mid * self.se_mid + self.se_mid + self.mid
            return n + self.mid * self.cout + 2 * self.cout
        if self.kind == "final_expand":
            return self.cin * self.cout + 2 * self.cout
        if self.kind == "feature_mix":
            return self.cin * self.cout
        return self.cin * self.cout + self.cout  # classifier

    # ---------------------------------------------------------------- building
    def build(self) -> nn.Module:
        """A standalone module for this op (random weights), in eval mode."""
        if self.kind == "stem":
            m: nn.Module = ConvBNAct(self.cin, self.cout, self.kernel, self.stride, act=self.act)
        elif self.kind in ("first", "mbconv"):
            m = MBConv(self.cin, self.mid, self.cout, self.kernel, self.stride, self.act,
                       self.se_mid, self.residual, expand_conv=self.kind == "mbconv",
                       paths=self.paths)
        elif self.kind == "final_expand":
            m = ConvBNAct(self.cin, self.cout, 1, act=self.act)
        elif self.kind == "feature_mix":
            m = FeatureMix(self.cin, self.cout)
        elif self.kind == "classifier":
            m = Classifier(self.cin, self.cout)
        else:
            raise ValueError(f"unknown op kind {self.kind!r}; allowed: {OP_KINDS}")
        return m.eval()


def block_op(space: SearchSpace, resolution: int, stage: int, index: int, kernel,
             expand: float, widths: Sequence[int] = ()) -> OpSpec:
    """The op of one elastic block at a position of the network; ``kernel`` is a kernel
    size or (multi-path spaces) a tuple of them, ``widths`` the arch's stage widths
    (default: the widest)."""
    spec = space.stages[stage]
    cin = space.block_input_channels(stage, index, widths)
    cout = (widths or space.stage_widths)[stage]
    stride = spec.stride if index == 0 else 1
    mid = space.mid_channels(cin, expand)
    hw = space.feature_size(resolution, stage)
    if index > 0:
        hw = _conv_out(hw, spec.stride)
    paths = kernel_paths(kernel)
    kernel, paths = max(paths), paths if len(paths) > 1 else ()
    return OpSpec("mbconv", hw, cin, cout, mid, expand, kernel, stride, spec.act,
                  space.se_channels(mid) if spec.se else 0, stride == 1 and cin == cout, paths)


def fixed_ops(space: SearchSpace, resolution: int, last_width: int | None = None
              ) -> tuple[list[OpSpec], list[OpSpec]]:
    """The ops every subnet at ``resolution`` has: (before the stages, after them);
    ``last_width``: the last stage's width (default: its widest)."""
    stem_c, first_c = space.stem_channels, space.first_block_channels
    hw = _conv_out(resolution, 2)
    head = [
        OpSpec("stem", resolution, space.in_channels, stem_c, kernel=3, stride=2,
               act=space.stem_act),
        OpSpec("first", hw, stem_c, first_c, stem_c, 1, 3, 1, space.first_block_act, 0,
               stem_c == first_c),
    ]
    last_c = last_width or space.stage_widths[-1]
    fe, fm = space.final_expand_channels, space.feature_mix_channels
    tail = [
        OpSpec("final_expand", space.feature_size(resolution), last_c, fe, act="hswish"),
        OpSpec("feature_mix", space.feature_size(resolution), fe, fm, act="hswish"),
        OpSpec("classifier", 1, fm, space.num_classes),
    ]
    return head, tail


def ops(arch: Arch, space: SearchSpace) -> list[OpSpec]:
    """The subnet's ops in execution order."""
    head, tail = fixed_ops(space, arch.r, arch.w[-1] if arch.w else None)
    blocks = [block_op(space, arch.r, s, b, k, e, arch.w)
              for s, b, k, e in space.active_blocks(arch)]
    return head + blocks + tail


def build_network(op_list: Iterable[OpSpec]) -> nn.Sequential:
    """Ops' modules in sequence: the same layer structure as ``Supernet.subnet``."""
    return nn.Sequential(*[op.build() for op in op_list]).eval()


@dataclass(frozen=True)
class NetworkBuild:
    """``build_network(op_list)`` as a callable that keeps its ops, so a backend whose
    conversion is slow can assemble the network from the ops it has already converted."""

    op_list: tuple[OpSpec, ...]

    def __call__(self) -> nn.Sequential:
        return build_network(self.op_list)


def unique_ops(space: SearchSpace, resolutions: Sequence[int] | None = None) -> list[OpSpec]:
    """Every distinct op any subnet of the space can contain (what a full LUT holds)."""
    seen: dict[str, OpSpec] = {}
    for r in resolutions or space.resolutions:
        for op in _position_ops(space, r):
            seen.setdefault(op.key, op)
    return list(seen.values())


def _position_ops(space: SearchSpace, r: int) -> Iterator[OpSpec]:
    """Every op at every position of a net at ``r`` px: fixed ones, then each block with
    every (input width, output width, kernel, expand) it can see."""
    for last in space.width_choices(space.n_stages - 1):
        head, tail = fixed_ops(space, r, last)
        yield from head + tail
    for s in range(space.n_stages):
        for b in range(max(space.stage_depths(s))):
            for widths in _width_pairs(space, s, b):
                for k in space.kernel_choices:
                    for e in space.stage_expands(s):
                        yield block_op(space, r, s, b, k, e, widths)


def _width_pairs(space: SearchSpace, s: int, b: int) -> list[tuple[int, ...]]:
    """Arch widths for every (input, output) width a block at stage ``s``, index ``b`` can
    see (only a stage's first block sees the stage before)."""
    ins = space.width_choices(s - 1) if _reads_stage_before(s, b) else (None,)
    return [_block_widths(space, s, w_in, w_out)
            for w_in in ins for w_out in space.width_choices(s)]


def _reads_stage_before(s: int, b: int) -> bool:
    return s > 0 and b == 0


def _block_widths(space: SearchSpace, s: int, w_in: int | None, w_out: int
                  ) -> tuple[int, ...]:
    """Arch widths with stage ``s`` at ``w_out`` and the stage before at ``w_in`` (the
    others at their widest: a block depends on these two only)."""
    widths = list(space.stage_widths)
    widths[s] = w_out
    if w_in is not None:
        widths[s - 1] = w_in
    return tuple(widths)


# ------------------------------------------------------------------ fast counting
@dataclass(frozen=True)
class Counts:
    """MACs and params of one subnet."""

    macs: int
    params: int


@functools.lru_cache(maxsize=16)
def op_grid(space: SearchSpace) -> tuple[np.ndarray, list[list[list[OpSpec]]]]:
    """Every block op by position: an object array [R, S, D, Win, W, K, E] of
    :class:`OpSpec` (Win: the width gene of the stage before, which only a stage's first
    block reads; W: its own stage's width gene; choices a stage lacks repeat its last), and
    per resolution and last-stage width gene the fixed ops (stem, first block, head). The
    basis of every vectorised per-arch sum (MACs, params, LUT latency)."""
    R, S, D = len(space.resolutions), space.n_stages, space.max_depth
    widths = encoding.width_table(space)
    W = widths.shape[1]
    K = len(space.kernel_choices)
    E = max(len(space.stage_expands(s)) for s in range(S))
    grid = np.empty((R, S, D, W, W, K, E), dtype=object)
    fixed = []
    for ri, r in enumerate(space.resolutions):
        per_width = []
        for last in widths[-1]:
            head, tail = fixed_ops(space, r, int(last))
            per_width.append(head + tail)
        fixed.append(per_width)
        for s in range(S):
            expands = space.stage_expands(s)
            for b in range(D):
                for wi, wo in np.ndindex(W, W):
                    w_in = int(widths[s - 1, wi]) if _reads_stage_before(s, b) else None
                    arch_w = _block_widths(space, s, w_in, int(widths[s, wo]))
                    for ki, k in enumerate(space.kernel_choices):
                        for ei in range(E):
                            e = expands[min(ei, len(expands) - 1)]
                            grid[ri, s, b, wi, wo, ki, ei] = block_op(space, r, s, b, k, e,
                                                                      arch_w)
    return grid, fixed


def tabulate(space: SearchSpace, value, dtype=np.float64, by_resolution: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
    """``value(op)`` for every block position ([R, S, D, Win, W, K, E, ...]) and the sum over
    each resolution's fixed ops ([R, W, ...]). ``value`` may return a number or a tuple;
    with ``by_resolution`` it is called as ``value(op, r)`` with the network's input size."""
    grid, fixed = op_grid(space)
    call = value if by_resolution else (lambda op, r: value(op))
    cache: dict = {}

    def cached(op, r):
        key = (op, r)
        if key not in cache:
            cache[key] = np.asarray(call(op, r), dtype=dtype)
        return cache[key]

    sample = cached(grid.flat[0], space.resolutions[0])
    blocks = np.zeros(grid.shape + sample.shape, dtype=dtype)
    for idx, op in np.ndenumerate(grid):
        blocks[idx] = cached(op, space.resolutions[idx[0]])
    fixed_sum = np.stack([np.stack([np.sum([cached(op, r) for op in ops_w], axis=0)
                                    for ops_w in ops_r])
                          for r, ops_r in zip(space.resolutions, fixed)])
    return blocks, fixed_sum


def sum_over_archs(X: np.ndarray, space: SearchSpace, blocks: np.ndarray,
                   fixed: np.ndarray, per_stage: bool = False):
    """Sum a tabulated per-op value over each arch of an encoding matrix (no Python loop
    per arch): fixed part of its resolution plus every active block's entry. With
    ``per_stage``, returns (block sums per stage [n, S, ...], fixed part [n, ...])."""
    D, step = space.max_depth, 1 + 2 * space.max_depth
    ri = X[:, -1]
    depths = encoding.stage_depths(space, X)      # [n, S]
    wg = encoding.stage_widths(space, X)          # [n, S] width genes
    per = []
    for s in range(space.n_stages):
        g = X[:, s * step:(s + 1) * step]
        depth = depths[:, s]
        w_out = wg[:, s]
        w_in = wg[:, s - 1] if s > 0 else w_out
        acc = blocks[ri, s, 0, w_in, w_out, g[:, 1], g[:, 1 + D]].copy()  # first block
        for b in range(1, D):
            cost = blocks[ri, s, b, w_out, w_out, g[:, 1 + b], g[:, 1 + D + b]]
            active = depth > b
            if cost.ndim > 1:
                active = active.reshape((-1,) + (1,) * (cost.ndim - 1))
            acc += np.where(active, cost, 0)
        per.append(acc)
    fixed_part = fixed[ri, wg[:, -1]]
    if per_stage:
        return np.stack(per, axis=1), fixed_part
    return fixed_part + sum(per)


@functools.lru_cache(maxsize=16)
def _cost_tables(space: SearchSpace) -> tuple[np.ndarray, np.ndarray]:
    return tabulate(space, lambda op: (op.macs, op.params), dtype=np.int64)


def encode_batch(archs: Sequence[Arch] | np.ndarray, space: SearchSpace) -> np.ndarray:
    """An (n, n_var) integer matrix from archs (or a matrix passed through, checked)."""
    if isinstance(archs, np.ndarray):
        X = np.asarray(archs)
        if X.ndim != 2 or X.shape[1] != space.n_var:
            raise ValueError(f"expected an (n, {space.n_var}) encoding matrix, got {X.shape}")
        return X.astype(np.int64)
    return np.stack([space.encode(a) for a in archs]) if len(archs) else \
        np.zeros((0, space.n_var), dtype=np.int64)


def count_batch(archs: Sequence[Arch] | np.ndarray, space: SearchSpace) -> np.ndarray:
    """MACs and params of many archs at once: an (n, 2) int64 array, no forward pass."""
    blocks, fixed = _cost_tables(space)
    return sum_over_archs(encode_batch(archs, space), space, blocks, fixed)


def count(arch: Arch, space: SearchSpace) -> Counts:
    """MACs and params of one arch."""
    macs, params = count_batch([arch], space)[0]
    return Counts(int(macs), int(params))


def describe(arch: Arch, space: SearchSpace) -> Table:
    """An arch as ``hwnas space show`` prints it: name, resolution, MACs, params, ops."""
    from hwnas.display import Table

    c = count(arch, space)
    table = Table(f"{space.arch_name(arch)}\nresolution {arch.r}  MACs {c.macs / 1e6:.2f} M  "
                  f"params {c.params / 1e6:.3f} M  key {arch.key}",
                  ["#", "op", "in", "cin", "mid", "cout", "k", "s", "e", "act", "SE", "res",
                   "MACs (M)", "params (K)"])
    for i, op in enumerate(ops(arch, space)):
        table.rows.append([str(i), op.kind, f"{op.hw}x{op.hw}", str(op.cin), str(op.mid or ""),
                           str(op.cout), "+".join(map(str, op.dw_kernels)), str(op.stride),
                           f"{op.expand:g}",
                           op.act, str(op.se_mid or ""), "y" if op.residual else "",
                           f"{op.macs / 1e6:.3f}", f"{op.params / 1e3:.1f}"])
    return table


def describe_presets() -> Table:
    """Every registered space preset with its size and origin (``hwnas space list``)."""
    from hwnas.display import Table
    from hwnas.space import PRESET_ORIGINS, SPACES

    table = Table("search space presets", ["preset", "networks", "unique ops", "MACs (M)",
                                           "params (M)", "px", "from"])
    for name in SPACES:
        sp = SPACES.create(name)
        lo, hi = count(sp.smallest(), sp), count(sp.largest(), sp)
        table.rows.append([name, f"{sp.size():.1e}", str(len(unique_ops(sp))),
                           f"{lo.macs / 1e6:.1f}-{hi.macs / 1e6:.0f}",
                           f"{lo.params / 1e6:.2f}-{hi.params / 1e6:.2f}",
                           f"{min(sp.resolutions)}-{max(sp.resolutions)}",
                           PRESET_ORIGINS.get(name, "")])
    return table


def describe_space(space: SearchSpace) -> list[str]:
    """What ``hwnas space info`` prints after the parameters: size, unique ops, encoding
    length, MACs and params from the smallest to the largest network."""
    lo, hi = count(space.smallest(), space), count(space.largest(), space)
    return [f"distinct networks: {space.size():,} ({space.size():.3e})",
            f"unique ops (LUT rows): {len(unique_ops(space))}",
            f"encoding length: {space.n_var}",
            f"MACs {lo.macs / 1e6:.1f}-{hi.macs / 1e6:.1f} M, "
            f"params {lo.params / 1e6:.2f}-{hi.params / 1e6:.2f} M"]
