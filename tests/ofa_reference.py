"""Once-for-All's own code, the reference the OFA interop tests compare with
(:mod:`benchmarks.ofa_reference` loads it), and the real artefacts in ``../shared/ofa/``;
tests that need either skip, saying what is missing."""

from __future__ import annotations

import pytest
import torch

from benchmarks.ofa_reference import SHARED, load_ofa, latency_table, ofa_spec  # noqa: F401


def ofa():
    """The ``ofa`` package's network and tutorial tools (skips when not installed)."""
    try:
        return load_ofa()
    except ImportError as exc:
        pytest.skip(str(exc))


def shared(*parts: str):
    """A file of the real artefacts; skips, saying where they were looked for, without."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"Once-for-All's released files are not at {path} (set "
                    f"HWNAS_OFA_FILES to the folder holding acc_predictor.pth, note10/, "
                    f"specialized/)")
    return path


def random_ofa_supernet(width_mult: float, seed: int = 0):
    """OFA's MobileNetV3 supernet, randomly initialised, with BN statistics, affine
    parameters and kernel-transform matrices moved away from their trivial initial values
    (identity transforms and unit variances would hide mapping mistakes). The statistics
    are estimated on random images first, so activations keep their scale through the
    depth and every subnet's logits depend on its input."""
    ref = ofa()
    torch.manual_seed(seed)
    net = ref.OFAMobileNetV3(ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6],
                             depth_list=[2, 3, 4], width_mult=width_mult, dropout_rate=0)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)
            m.reset_running_stats()
            m.momentum = None
        for name, p in net.named_parameters():
            if name.endswith("_matrix"):
                p.add_(0.1 * torch.randn_like(p))
        net.train()
        net(torch.randn(16, 3, 128, 128))
        for m in bns:
            m.momentum = 0.1
            m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn_like(m.running_mean))
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.25))
    return net.eval()


def legacy_keys(state: dict) -> dict:
    """The same weights under the released files' legacy names: ``mobile_inverted_conv``
    for the block layer, and the static spellings ``bn`` / ``conv`` for dynamic layers."""
    out = {}
    for key, value in state.items():
        key = key.replace(".conv.inverted_bottleneck", ".mobile_inverted_conv.inverted_bottleneck")
        key = key.replace(".conv.depth_conv", ".mobile_inverted_conv.depth_conv")
        key = key.replace(".conv.point_linear", ".mobile_inverted_conv.point_linear")
        key = key.replace(".bn.bn.", ".bn.").replace(".conv.conv.weight", ".conv.weight")
        out[key] = value
    return out
