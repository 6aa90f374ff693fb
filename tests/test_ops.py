import numpy as np
import pandas as pd
import torch
from torch import nn

from hwnas.ops import OpSpec, build_network, count, count_batch, ops, unique_ops
from hwnas.supernet import Supernet


def hook_macs(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * \
            m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, inp, out):
        nonlocal total
        total += m.in_features * m.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def test_op_list_order_and_fields(small):
    arch = small.sample(1, seed=0)[0]
    op_list = ops(arch, small)
    kinds = [o.kind for o in op_list]
    assert kinds == ["stem", "first"] + ["mbconv"] * sum(arch.d) + \
        ["final_expand", "feature_mix", "classifier"]
    blocks = op_list[2:-3]
    for op, (s, b, k, e) in zip(blocks, small.active_blocks(arch)):
        assert op.kernel == k and op.expand == e
        assert op.mid == small.mid_channels(op.cin, e)  # channels stored explicitly
        assert op.stride == (small.stages[s].stride if b == 0 else 1)
        assert op.act == small.stages[s].act and bool(op.se_mid) == small.stages[s].se
        assert op.residual == (op.stride == 1 and op.cin == op.cout)
    # each op's input is the previous op's output
    for a, b in zip(op_list, op_list[1:-1]):
        assert (a.out_hw, a.cout) == (b.hw, b.cin)


def test_opspec_is_hashable_with_stable_key_and_row():
    op = OpSpec("mbconv", 56, 24, 40, 72, 3, 5, 2, "relu", 24, False)
    assert op.key == "mbconv:56x24-72-40:k5s2:e3:relu:se24:res0"
    assert len({op, OpSpec("mbconv", 56, 24, 40, 72, 3, 5, 2, "relu", 24, False)}) == 1
    row = op.row()
    assert row["key"] == op.key and row["mid"] == 72 and row["expand"] == 3.0
    assert OpSpec.from_row(pd.DataFrame([row]).iloc[0].to_dict()) == op


def test_params_and_macs_match_built_networks(small):
    torch.manual_seed(0)
    net = Supernet(small).eval()
    archs = [small.smallest(), small.largest()] + small.sample(50, seed=1)
    for arch in archs:
        sub = net.subnet(arch)
        c = count(arch, small)
        assert c.params == sum(p.numel() for p in sub.parameters())
        assert c.macs == hook_macs(sub, torch.zeros(1, 3, arch.r, arch.r))
        assert c.macs == sum(o.macs for o in ops(arch, small))


def test_each_op_builds_and_matches_its_counts(small):
    for op in unique_ops(small, resolutions=[40]):
        m = op.build()
        assert sum(p.numel() for p in m.parameters()) == op.params
        x = torch.zeros(op.input_shape)
        assert hook_macs(m, x) == op.macs
        y = m(x)
        expected = (1, op.cout) if op.kind == "classifier" else (1, op.cout, op.out_hw, op.out_hw)
        assert tuple(y.shape) == expected


def test_ops_in_sequence_have_subnet_structure(small):
    arch = small.sample(1, seed=4)[0]
    net = Supernet(small).subnet(arch)
    seq = build_network(ops(arch, small))
    assert [type(m) for m in seq.modules()] == [type(m) for m in net.modules()]
    assert [p.shape for p in seq.parameters()] == [p.shape for p in net.parameters()]
    net.load_state_dict(seq.state_dict())  # same names, same shapes


def test_default_large_net_counts(default):
    arch = default.largest()
    net = Supernet(default).subnet(arch)
    c = count(arch, default)
    assert c.params == sum(p.numel() for p in net.parameters())
    assert c.macs == hook_macs(net, torch.zeros(1, 3, 224, 224))


def test_count_batch_matches_single(small):
    archs = small.sample(100, seed=9)
    batch = count_batch(archs, small)
    X = np.stack([small.encode(a) for a in archs])
    assert np.array_equal(batch, count_batch(X, small))
    for a, (m, p) in zip(archs, batch):
        c = count(a, small)
        assert (c.macs, c.params) == (m, p)


def test_unique_ops_cover_every_subnet_and_count(small, default):
    table = {o.key for o in unique_ops(small)}
    for arch in small.sample(200, seed=2):
        assert {o.key for o in ops(arch, small)} <= table
    # per resolution: stem, first, final expand, feature mix, plus per stage the first
    # block and the shared later-block position, for every kernel x expand; one classifier
    per_res = 4 + small.n_stages * 2 * len(small.kernels) * len(small.expands)
    assert len({o.key for o in unique_ops(small, [32])}) == per_res + 1
    n_default = len(unique_ops(default))
    assert n_default == 449  # shared keys across resolutions (e.g. 208 and 224 -> 7x7 head)
