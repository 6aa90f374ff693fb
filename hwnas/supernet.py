"""The weight-sharing supernet: the largest network, from which every subnet is cut.

Elastic in three ways, as Once-for-All is: kernel size (a centre crop of the largest
kernel passed through a learned per-size transform), expand ratio (the first channels of
the middle width) and depth (a stage's trailing blocks skipped); any input resolution
works because the head pools globally. Where the space has them, also in stage width (the
first channels of each block's input and output, AttentiveNAS/BigNAS) and in path sets
(MixPath: each kernel a path of its own, the active ones summed, shadow BN).
:meth:`Supernet.subnet` returns a plain static network (``layers.py`` modules only) with
the active weights copied out, which is what gets exported and timed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.layers import (Classifier, ConvBNAct, FeatureMix, MBConv, activation,
                          same_conv)
from hwnas.ops import build_network, ops
from hwnas.space import Arch, SearchSpace, get_space, kernel_paths


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d, channels: int) -> torch.Tensor:
    """BatchNorm over the first ``channels`` channels (running stats updated in place)."""
    training = bn.training or not bn.track_running_stats
    return F.batch_norm(x, bn.running_mean[:channels], bn.running_var[:channels],
                        bn.weight[:channels], bn.bias[:channels], training, bn.momentum or 0.0,
                        bn.eps)


def _bn_state(bn: nn.BatchNorm2d, index: torch.Tensor | slice, prefix: str) -> dict:
    return {
        f"{prefix}.weight": bn.weight[index], f"{prefix}.bias": bn.bias[index],
        f"{prefix}.running_mean": bn.running_mean[index],
        f"{prefix}.running_var": bn.running_var[index],
        f"{prefix}.num_batches_tracked": bn.num_batches_tracked,
    }


class ElasticMBConv(nn.Module):
    """An MBConv block holding its widest input, output and middle and its largest kernel;
    runs any (kernel, expand, input width, output width). In a multi-path space each kernel
    size is a path with its own weights, and the active paths' outputs are summed before
    the depthwise BN: with ``shadow_bn``, one BN per number of active paths (MixPath)."""

    def __init__(self, space: SearchSpace, cin: int, cout: int, stride: int, act: str,
                 se: bool, expands: tuple[float, ...], shadow_bn: bool = True) -> None:
        super().__init__()
        self.space, self.cin, self.cout, self.stride = space, cin, cout, stride
        self.multipath = space.max_paths > 1
        self.kernels = tuple(sorted(space.kernels, reverse=True))
        self.max_kernel = self.kernels[0]
        self.max_mid = space.mid_channels(cin, max(expands))
        self.expand_conv = nn.Conv2d(cin, self.max_mid, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(self.max_mid)
        if self.multipath:
            self.dw_paths = nn.ParameterDict({
                f"k{k}": nn.Parameter(nn.init.kaiming_uniform_(
                    torch.empty(self.max_mid, 1, k, k), a=5 ** 0.5)) for k in space.kernels})
            n_bns = space.max_paths if shadow_bn else 1
            self.dw_bns = nn.ModuleList([nn.BatchNorm2d(self.max_mid) for _ in range(n_bns)])
        else:
            self.dw_conv = nn.Conv2d(self.max_mid, self.max_mid, self.max_kernel, stride,
                                     self.max_kernel // 2, groups=self.max_mid, bias=False)
            self.dw_bn = nn.BatchNorm2d(self.max_mid)
            # Kernel transforms, one per step down (7->5, 5->3), identity at start (OFA).
            self.kernel_transforms = nn.ParameterDict({
                f"{big}to{small}": nn.Parameter(torch.eye(small * small))
                for big, small in zip(self.kernels, self.kernels[1:])
            })
        self.se_max = space.se_channels(self.max_mid) if se else 0
        if se:
            self.se_reduce = nn.Conv2d(self.max_mid, self.se_max, 1, bias=True)
            self.se_expand = nn.Conv2d(self.se_max, self.max_mid, 1, bias=True)
        self.project_conv = nn.Conv2d(self.max_mid, cout, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(cout)
        self.act = activation(act)
        self.active_kernel: Any = space.kernel_choices[-1]
        self.active_expand = max(expands)
        self.active_cin, self.active_cout = cin, cout

    @property
    def active_mid(self) -> int:
        return self.space.mid_channels(self.active_cin, self.active_expand)

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.active_cin == self.active_cout

    def active_filter(self, mid: int, kernel: int) -> torch.Tensor:
        """Depthwise weights for ``kernel``: centre crops transformed step by step (in a
        multi-path space: that path's own weights)."""
        if self.multipath:
            return self.dw_paths[f"k{kernel}"][:mid]
        filt = self.dw_conv.weight[:mid]
        for big, small in zip(self.kernels, self.kernels[1:]):
            if big <= kernel:
                break
            start = (big - small) // 2
            crop = filt[:, :, start:start + small, start:start + small].reshape(-1, small * small)
            filt = F.linear(crop, self.kernel_transforms[f"{big}to{small}"]).reshape(
                mid, 1, small, small)
        return filt

    def dw_norm(self, kernel) -> nn.BatchNorm2d:
        """The BN after the depthwise layer: with shadow BNs, the one of its path count."""
        if not self.multipath:
            return self.dw_bn
        return self.dw_bns[min(len(kernel), len(self.dw_bns)) - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid, k, cin, cout = self.active_mid, self.active_kernel, self.active_cin, \
            self.active_cout
        y = self.act(_bn(F.conv2d(x, self.expand_conv.weight[:mid, :cin]), self.expand_bn, mid))
        paths = kernel_paths(k)
        z = same_conv(y, self.active_filter(mid, paths[0]), self.stride, mid)
        for kernel in paths[1:]:
            z = z + same_conv(y, self.active_filter(mid, kernel), self.stride, mid)
        y = self.act(_bn(z, self.dw_norm(paths), mid))
        if self.se_max:
            sm = self.space.se_channels(mid)
            s = y.mean((2, 3), keepdim=True)
            s = F.relu(F.conv2d(s, self.se_reduce.weight[:sm, :mid], self.se_reduce.bias[:sm]))
            s = F.conv2d(s, self.se_expand.weight[:mid, :sm], self.se_expand.bias[:mid])
            y = y * F.hardsigmoid(s)
        y = _bn(F.conv2d(y, self.project_conv.weight[:cout, :mid]), self.project_bn, cout)
        return x + y if self.residual else y

    def static_state(self, kernel, expand: float, cin: int | None = None,
                     cout: int | None = None) -> dict[str, torch.Tensor]:
        """State dict of the equivalent static :class:`~hwnas.layers.MBConv`."""
        cin, cout = cin or self.cin, cout or self.cout
        mid = self.space.mid_channels(cin, expand)
        paths = kernel_paths(kernel)
        sd: dict[str, Any] = {
            "inverted_bottleneck.conv.weight": self.expand_conv.weight[:mid, :cin]}
        sd |= _bn_state(self.expand_bn, slice(0, mid), "inverted_bottleneck.bn")
        if len(paths) > 1:
            for i, k in enumerate(paths):
                sd[f"depth_conv.convs.{i}.weight"] = self.active_filter(mid, k)
        else:
            sd["depth_conv.conv.weight"] = self.active_filter(mid, paths[0])
        sd |= _bn_state(self.dw_norm(paths), slice(0, mid), "depth_conv.bn")
        if self.se_max:
            sm = self.space.se_channels(mid)
            sd["se.reduce.weight"] = self.se_reduce.weight[:sm, :mid]
            sd["se.reduce.bias"] = self.se_reduce.bias[:sm]
            sd["se.expand.weight"] = self.se_expand.weight[:mid, :sm]
            sd["se.expand.bias"] = self.se_expand.bias[:mid]
        sd["point_linear.conv.weight"] = self.project_conv.weight[:cout, :mid]
        sd |= _bn_state(self.project_bn, slice(0, cout), "point_linear.bn")
        return {k: v.detach().clone() for k, v in sd.items()}

    def _depthwise(self) -> list[tuple[torch.Tensor, list[nn.BatchNorm2d]]]:
        if self.multipath:
            return [(w, []) for w in self.dw_paths.values()] + [(None, list(self.dw_bns))]
        return [(self.dw_conv.weight, [self.dw_bn])]

    @torch.no_grad()
    def reorganize_channels(self) -> None:
        """Sort middle channels (and SE channels) by importance, most important first, so
        small expand ratios keep the channels that matter. Function-preserving."""
        if self.se_max:
            se_order = self.se_expand.weight.abs().sum((0, 2, 3)).argsort(descending=True)
            self.se_expand.weight.copy_(self.se_expand.weight[:, se_order])
            self.se_reduce.weight.copy_(self.se_reduce.weight[se_order])
            self.se_reduce.bias.copy_(self.se_reduce.bias[se_order])
        order = self.project_conv.weight.abs().sum((0, 2, 3)).argsort(descending=True)
        self.project_conv.weight.copy_(self.project_conv.weight[:, order])
        if self.se_max:
            self.se_expand.weight.copy_(self.se_expand.weight[order])
            self.se_expand.bias.copy_(self.se_expand.bias[order])
            self.se_reduce.weight.copy_(self.se_reduce.weight[:, order])
        self.expand_conv.weight.copy_(self.expand_conv.weight[order])
        for weight, bns in self._depthwise() + [(None, [self.expand_bn])]:
            if weight is not None:
                weight.copy_(weight[order])
            for bn in bns:
                _permute_bn(bn, order)


def _permute_bn(bn: nn.BatchNorm2d, order: torch.Tensor) -> None:
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        t.copy_(t[order])


class Supernet(nn.Module):
    """The elastic network of a :class:`SearchSpace`; ``set_active`` picks the subnet."""

    def __init__(self, space: SearchSpace | str = "default", dropout: float = 0.0,
                 shadow_bn: bool = True) -> None:
        super().__init__()
        space = get_space(space)
        self.space, self.shadow_bn = space, shadow_bn
        stem_c, first_c = space.stem_channels, space.first_block_channels
        self.stem = ConvBNAct(space.in_channels, stem_c, 3, 2, act=space.stem_act)
        self.first = MBConv(stem_c, stem_c, first_c, 3, 1, space.first_block_act,
                            residual=stem_c == first_c, expand_conv=False)
        self.stages = nn.ModuleList()
        for s, spec in enumerate(space.stages):
            self.stages.append(nn.ModuleList([
                ElasticMBConv(space, space.block_input_channels(s, b), space.stage_widths[s],
                              spec.stride if b == 0 else 1, spec.act, spec.se,
                              space.stage_expands(s), shadow_bn)
                for b in range(max(space.stage_depths(s)))
            ]))
        self.final_expand = ConvBNAct(space.stage_widths[-1], space.final_expand_channels, 1,
                                      act="hswish")
        self.feature_mix = FeatureMix(space.final_expand_channels, space.feature_mix_channels)
        self.classifier = Classifier(space.feature_mix_channels, space.num_classes, dropout)
        self.active_arch = space.largest()
        self.set_active(self.active_arch)

    def set_active(self, arch: Arch | dict) -> Arch:
        """Make ``arch`` the network that :meth:`forward` runs; returns it canonical."""
        arch = self.space.arch(arch)
        widths = self.space.arch_widths(arch)
        for s, b, k, e in self.space.active_blocks(arch):
            block = self.stages[s][b]
            block.active_kernel, block.active_expand = k, e
            block.active_cin = self.space.block_input_channels(s, b, widths)
            block.active_cout = widths[s]
        self.active_arch = arch
        return arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.run_stem(x)
        for s in range(len(self.stages)):
            x = self.run_stage(s, x)
        return self.run_head(x)

    # The forward pass in pieces, for methods that train or rate stage by stage (DNA).
    def run_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.first(self.stem(x))

    def run_stage(self, s: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``s`` of the active subnet (its active depth) on ``x``."""
        for block in self.stages[s][:self.active_arch.d[s]]:
            x = block(x)
        return x

    def run_head(self, x: torch.Tensor) -> torch.Tensor:
        fe = self.final_expand
        if x.shape[1] != fe.conv.in_channels:  # a narrower last stage: its first channels
            x = fe.act(fe.bn(F.conv2d(x, fe.conv.weight[:, :x.shape[1]])))
        else:
            x = fe(x)
        return self.classifier(self.feature_mix(x))

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The active subnet's features at every stage boundary: the stages' input first,
        then each stage's output."""
        feats = [self.run_stem(x)]
        for s in range(len(self.stages)):
            feats.append(self.run_stage(s, feats[-1]))
        return feats

    @torch.no_grad()
    def subnet(self, arch: Arch | dict | None = None) -> nn.Sequential:
        """A standalone static network for ``arch`` (default: the active one) with the
        weights copied out; in eval mode it computes what the supernet computes."""
        arch = self.active_arch if arch is None else self.space.arch(arch)
        net = build_network(ops(arch, self.space))
        modules = list(net)
        modules[0].load_state_dict(self.stem.state_dict())
        modules[1].load_state_dict(self.first.state_dict())
        widths = self.space.arch_widths(arch)
        for module, (s, b, k, e) in zip(modules[2:], self.space.active_blocks(arch)):
            module.load_state_dict(self.stages[s][b].static_state(
                k, e, self.space.block_input_channels(s, b, widths), widths[s]))
        head = self.final_expand.state_dict()
        head["conv.weight"] = head["conv.weight"][:, :widths[-1]]
        modules[-3].load_state_dict(head)
        modules[-2].load_state_dict(self.feature_mix.state_dict())
        modules[-1].load_state_dict(self.classifier.state_dict())
        return net.train(self.training)

    def reorganize_channels(self) -> None:
        """Sort every block's middle channels by importance (OFA), and every elastic stage's
        output channels (so a narrower width keeps the channels that matter); outputs
        unchanged."""
        for stage in self.stages:
            for block in stage:
                block.reorganize_channels()
        for s in range(len(self.stages)):
            if len(self.space.width_choices(s)) > 1:
                self._reorder_stage_outputs(s)

    @torch.no_grad()
    def _reorder_stage_outputs(self, s: int) -> None:
        """Permute stage ``s``'s output channels, most important (summed |projection
        weights| of its blocks) first: every block's projection and its BN, the inputs of
        the stage's later blocks, and the input of whatever reads the stage's output."""
        blocks = list(self.stages[s])
        importance = sum(b.project_conv.weight.abs().sum((1, 2, 3)) for b in blocks)
        order = importance.argsort(descending=True)
        for i, block in enumerate(blocks):
            block.project_conv.weight.copy_(block.project_conv.weight[order])
            _permute_bn(block.project_bn, order)
            if i > 0:
                block.expand_conv.weight.copy_(block.expand_conv.weight[:, order])
        nxt = self.stages[s + 1][0].expand_conv if s + 1 < len(self.stages) \
            else self.final_expand.conv
        nxt.weight.copy_(nxt.weight[:, order])
