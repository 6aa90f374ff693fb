import pytest
import torch
from torch import nn

from hwnas.layers import MBConv
from hwnas.supernet import Supernet


def _perturb_bn(net: nn.Module, seed: int = 0) -> None:
    """Give BatchNorm non-trivial statistics so that slicing mistakes would show."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    for name, p in net.named_parameters():
        if "kernel_transforms" in name:  # trained transforms are not the identity
            p.data.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def small_net():
    from hwnas.space import SearchSpace

    torch.manual_seed(0)
    net = Supernet(SearchSpace.small()).eval()
    _perturb_bn(net)
    return net


def test_subnet_equals_supernet_on_many_archs(small_net):
    sp = small_net.space
    archs = [sp.smallest(), sp.largest()] + sp.sample(60, seed=11)
    worst = 0.0
    for arch in archs:
        x = torch.randn(2, 3, arch.r, arch.r)
        small_net.set_active(arch)
        sub = small_net.subnet(arch).eval()
        with torch.no_grad():
            worst = max(worst, (small_net(x) - sub(x)).abs().max().item())
        # a standalone, static network: no elastic module or supernet weights inside
        assert not any(type(m).__name__.startswith("Elastic") for m in sub.modules())
        assert not any(p.data_ptr() == q.data_ptr()
                       for p in sub.parameters() for q in small_net.parameters())
    assert worst <= 1e-5


def _grads(net: nn.Module, x: torch.Tensor) -> None:
    net.zero_grad()
    net(x).square().sum().backward()


@pytest.mark.parametrize("r", [32, 48])
def test_cropped_kernels_train_like_full_ones(r, monkeypatch):
    """In training, the supernet and the static layers crop large depthwise kernels on
    small maps (stages 3-5 here are 1x1 to 3x3). Gradients must equal those of the full
    kernels, which the static subnet runs when the crop is switched off."""
    import copy

    from hwnas import layers
    from hwnas.space import SearchSpace

    sp = SearchSpace.small()
    torch.manual_seed(0)
    net = Supernet(sp).train()
    big = sp.largest()
    arch = sp.arch(r=r, d=big.d, k=big.k, e=big.e)
    net.set_active(arch)
    cropped = net.subnet(arch).train()
    full = copy.deepcopy(cropped)
    x = torch.randn(4, 3, r, r)
    _grads(net, x)
    _grads(cropped, x)
    monkeypatch.setattr(layers, "reachable_kernel", lambda w, size: w)
    _grads(full, x)
    blocks = zip(list(full)[2:], list(cropped)[2:], sp.active_blocks(arch))
    for ref_block, static_block, (s, b, k, _) in blocks:
        ref = ref_block.depth_conv.conv.weight.grad
        assert ref.shape[-1] == k
        for mine in (net.stages[s][b].dw_conv.weight.grad,
                     static_block.depth_conv.conv.weight.grad):
            assert torch.allclose(mine, ref, rtol=1e-4, atol=1e-6 * ref.abs().max())


def test_exported_subnets_keep_their_declared_kernels(tmp_path):
    import onnx

    from hwnas.convert import to_onnx
    from hwnas.space import SearchSpace

    sp = SearchSpace.small()
    big = sp.largest()
    arch = sp.arch(r=32, d=big.d, k=big.k, e=big.e)  # the last stages run on 1x1 and 2x2 maps
    to_onnx(Supernet(sp).subnet(arch).eval(), torch.randn(1, 3, 32, 32), tmp_path / "n.onnx")
    graph = onnx.load(tmp_path / "n.onnx").graph
    depthwise = [n for n in graph.node if n.op_type == "Conv" and any(
        a.name == "group" and a.i > 1 for a in n.attribute)]
    shapes = [list(next(a.ints for a in n.attribute if a.name == "kernel_shape"))
              for n in depthwise]
    assert len(shapes) == 1 + sum(big.d) and all(s == [7, 7] for s in shapes[1:])


def test_subnet_on_default_space_largest_and_smallest():
    from hwnas.space import SearchSpace

    sp = SearchSpace.default()
    torch.manual_seed(1)
    net = Supernet(sp).eval()
    _perturb_bn(net, 1)
    for arch in (sp.smallest(), sp.largest()):
        net.set_active(arch)
        x = torch.randn(1, 3, arch.r, arch.r)
        with torch.no_grad():
            assert (net(x) - net.subnet(arch).eval()(x)).abs().max().item() <= 1e-5


def test_elastic_kernel_uses_transformed_centre(small_net):
    block = small_net.stages[1][1]
    mid = block.max_mid
    w7 = block.dw_conv.weight[:mid]
    # 5x5 = centre of 7x7 through the 7->5 transform, 3x3 = centre of that through 5->3
    t75 = block.kernel_transforms["7to5"]
    t53 = block.kernel_transforms["5to3"]
    k5 = torch.nn.functional.linear(w7[:, :, 1:6, 1:6].reshape(-1, 25), t75).reshape(mid, 1, 5, 5)
    k3 = torch.nn.functional.linear(k5[:, :, 1:4, 1:4].reshape(-1, 9), t53).reshape(mid, 1, 3, 3)
    assert torch.allclose(block.active_filter(mid, 7), w7)
    assert torch.allclose(block.active_filter(mid, 5), k5)
    assert torch.allclose(block.active_filter(mid, 3), k3)
    assert not torch.allclose(k3, w7[:, :, 2:5, 2:5])  # a transform, not a plain crop


def test_elastic_depth_and_expand_change_the_output(small_net):
    sp = small_net.space
    base = sp.largest()
    x = torch.randn(1, 3, base.r, base.r)

    def stage0(arch):  # at random init the signal fades with depth: look early
        small_net.set_active(arch)
        h = small_net.first(small_net.stem(x))
        for block in small_net.stages[0][:arch.d[0]]:
            h = block(h)
        return h

    y = stage0(base)
    shallower = sp.arch(r=base.r, d=[2] + list(base.d[1:]), k=base.k, e=base.e)
    narrower = sp.arch(r=base.r, d=base.d, k=[3] + list(base.k[1:]), e=[3] + list(base.e[1:]))
    for other in (shallower, narrower):
        assert (stage0(other) - y).abs().max() > 1e-3
    small_net.set_active(base)


def test_any_resolution_runs(small_net):
    small_net.set_active(small_net.space.largest())
    for r in small_net.space.resolutions:
        assert small_net(torch.randn(1, 3, r, r)).shape == (1, 10)


def test_subnet_structure(small_net):
    sp = small_net.space
    arch = sp.sample(1, seed=5)[0]
    sub = small_net.subnet(arch)
    assert len(sub) == 2 + sum(arch.d) + 3
    blocks = [m for m in sub if isinstance(m, MBConv)]
    assert [m.depth_conv.conv.kernel_size[0] for m in blocks[1:]] == \
        [k for _, _, k, _ in sp.active_blocks(arch)]


def test_reorganize_channels_is_function_preserving_and_sorts():
    from hwnas.space import SearchSpace

    sp = SearchSpace.small()
    torch.manual_seed(3)
    net = Supernet(sp).eval()
    _perturb_bn(net, 3)
    archs = [sp.largest()] + [sp.arch(r=a.r, d=a.d, k=a.k, e=[6] * 20)
                              for a in sp.sample(5, seed=2)]
    xs = [torch.randn(2, 3, a.r, a.r) for a in archs]
    before = []
    for a, x in zip(archs, xs):
        net.set_active(a)
        before.append(net(x))
    small_before = net.subnet(sp.smallest())
    net.reorganize_channels()
    for a, x, y in zip(archs, xs, before):
        net.set_active(a)
        assert (net(x) - y).abs().max().item() <= 1e-5
    block = net.stages[2][0]
    importance = block.project_conv.weight.abs().sum((0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])
    # small expand ratios now keep other (the most important) channels
    after = net.subnet(sp.smallest())
    assert not torch.equal(after[2].point_linear.conv.weight,
                           small_before[2].point_linear.conv.weight)


def test_set_active_validates(small_net):
    from hwnas.errors import ArchError

    with pytest.raises(ArchError):
        small_net.set_active({"r": 224, "d": [2] * 5, "k": [3] * 20, "e": [3] * 20})
