"""Structural features of archs: what a network *is*, in numbers that mean the same on every
device (no measurement in them).

Latency regimes differ in which of these matter: compute-bound runtimes follow MACs,
dispatch-bound ones (batch 1 on a GPU, PyTorch eager) follow the number of layers, and
memory-bound ones the bytes moved. A few-shot predictor fitted on a new device learns the
weights of these from a handful of measurements (``hwnas.fewshot``).

Every feature is a sum over the net's ops, so it is tabulated once per op position and
summed over arch batches without a Python loop per arch (``hwnas.ops.tabulate``).
"""

from __future__ import annotations

import functools

import numpy as np

from hwnas import encoding
from hwnas.ops import OpSpec, encode_batch, sum_over_archs, tabulate
from hwnas.space import SearchSpace, kernel_paths

def op_feature_names(space: SearchSpace) -> list[str]:
    """Per-op quantities summed over a net (MACs in millions, bytes in MB at fp32):
    depthwise MACs per kernel size, because runtimes differ most there (XNNPACK runs 7x7
    depthwise convolutions 4-14x slower than ONNX Runtime, 3x3 ones faster)."""
    return (["pw_macs"] + [f"dw_macs_k{k}" for k in space.kernels]
            + ["se_macs", "head_macs", "act_mb", "weight_mb", "layers", "ops"])


def op_features(op: OpSpec, kernels: tuple[int, ...]) -> tuple[float, ...]:
    """One op's contribution to :func:`op_feature_names`: pointwise (1x1 and stem) MACs,
    depthwise MACs by kernel size, squeeze-excite MACs, head MACs (the pooled 1x1 layers),
    activation bytes read and written, weight bytes, layers (kernels launched) and 1."""
    ho = op.out_hw
    pw = dw = se = head = 0.0
    layers = 0
    act = op.hw * op.hw * op.cin
    if op.kind == "stem":
        pw, layers, act = op.macs, 1, act + ho * ho * op.cout
    elif op.kind in ("first", "mbconv"):
        if op.kind == "mbconv":  # expansion 1x1
            pw += op.hw * op.hw * op.cin * op.mid
            act += 2 * op.hw * op.hw * op.mid
            layers += 1
        dw = ho * ho * op.mid * sum(k * k for k in op.dw_kernels)
        act += 2 * ho * ho * op.mid * len(op.dw_kernels)
        layers += 2 * len(op.dw_kernels) - 1  # one conv per path, the adds between them
        if op.se_mid:  # pool, reduce, expand, scale
            se = 2 * op.mid * op.se_mid
            act += ho * ho * op.mid
            layers += 4
        pw += ho * ho * op.mid * op.cout
        act += ho * ho * op.cout * (2 if op.residual else 1)
        layers += 1 + int(op.residual)
    elif op.kind == "final_expand":
        pw, layers, act = op.macs, 1, act + op.hw * op.hw * op.cout
    else:  # feature_mix (pool + 1x1 on the pooled map), classifier
        head, layers, act = op.macs, 1 + int(op.kind == "feature_mix"), act + op.cout
    dw_by_kernel = [dw * k * k / sum(j * j for j in op.dw_kernels) / 1e6
                    if k in op.dw_kernels else 0.0 for k in kernels]
    return (pw / 1e6, *dw_by_kernel, se / 1e6, head / 1e6, act * 4 / 1e6, op.params * 4 / 1e6,
            float(layers), 1.0)


@functools.lru_cache(maxsize=16)
def _tables(space: SearchSpace) -> tuple[np.ndarray, np.ndarray]:
    return tabulate(space, lambda op: op_features(op, tuple(space.kernels)))


def feature_names(space: SearchSpace) -> list[str]:
    """Names of :func:`structural_features`' columns."""
    names = op_feature_names(space)
    names += [f"stage{s}_{f}" for s in range(space.n_stages) for f in ("depth", "macs")]
    if space.elastic_widths:
        names += [f"stage{s}_width" for s in range(space.n_stages)]
    names += [f"kernel{k}" for k in space.kernels]
    names += [f"expand{e:g}" for e in _all_expands(space)]
    names += ["blocks", "resolution", "macs", "params_m"]
    return names


def _all_expands(space: SearchSpace) -> list[float]:
    return sorted({e for s in range(space.n_stages) for e in space.stage_expands(s)})


def structural_features(archs, space: SearchSpace) -> np.ndarray:
    """[n, len(feature_names(space))] float64 features of archs (Arch list or encodings):
    the op sums of :func:`op_feature_names`; per stage its depth and MACs; how many active blocks
    use each kernel size and each expand ratio; block count; resolution; MACs (M) and params
    (M) of the whole net."""
    from hwnas.ops import count_batch

    X = encode_batch(archs, space)
    blocks, fixed = _tables(space)
    per_stage, fixed_part = sum_over_archs(X, space, blocks, fixed, per_stage=True)
    totals = per_stage.sum(1) + fixed_part                     # [n, F]
    names = op_feature_names(space)
    stage_macs = sum(per_stage[:, :, names.index(n)] for n in names
                     if n in ("pw_macs", "se_macs") or n.startswith("dw_macs"))
    D, step, S = space.max_depth, 1 + 2 * space.max_depth, space.n_stages
    depths = encoding.stage_depths(space, X)                              # [n, S]
    active = np.arange(D)[None, None, :] < depths[:, :, None]              # [n, S, D]
    k_idx = np.stack([X[:, s * step + 1:s * step + 1 + D] for s in range(S)], 1)
    e_idx = np.stack([X[:, s * step + 1 + D:(s + 1) * step] for s in range(S)], 1)
    # blocks using each kernel size (a path set counts for each of its kernels)
    uses = np.array([[k in kernel_paths(c) for k in space.kernels]
                     for c in space.kernel_choices], dtype=np.int64)     # [K choices, kernels]
    k_hist = (uses[k_idx] * active[..., None]).sum((1, 2))
    expands = _all_expands(space)
    e_val = np.stack([np.asarray([expands.index(e) for e in space.stage_expands(s)]
                                 )[e_idx[:, s]] for s in range(S)], 1)
    e_hist = np.stack([((e_val == i) & active).sum((1, 2)) for i in range(len(expands))], 1)
    counts = count_batch(X, space)
    per = np.stack([depths, stage_macs], 2).reshape(len(X), -1)
    if space.elastic_widths:
        widths = encoding.width_table(space)
        wg = encoding.stage_widths(space, X)
        per = np.column_stack([per] + [widths[s][wg[:, s]] for s in range(S)])
    return np.column_stack([totals, per, k_hist, e_hist, depths.sum(1),
                            np.asarray(space.resolutions)[X[:, -1]], counts[:, 0] / 1e6,
                            counts[:, 1] / 1e6]).astype(np.float64)


__all__ = ["feature_names", "op_feature_names", "op_features", "structural_features"]
