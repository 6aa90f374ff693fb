"""The BN-γ indicator (BN-NAS, Chen et al., ICCV 2021), a zero-cost accuracy rating.

BN-NAS rates a candidate operation by the magnitude of its batch-norm scale parameters γ
after a short supernet training, and a subnet by the sum over its operations: no
evaluation pass, no data. ``--accuracy bn:CKPT`` rates subnets of any hwnas supernet this
way: each active block contributes the mean |γ| over the channels it uses of each of its
BNs (expansion, depthwise, projection), summed over the subnet's blocks.

Simplified: BN-NAS's supernet has a separate operation, with its own BN, per choice.
In hwnas's weight-sharing supernet the kernel sizes of a block share their BNs, so the
indicator cannot tell them apart; expand ratios differ in the channels used and depths
in the blocks summed, and resolution is not seen at all. The strategies benchmark
measures what that costs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from hwnas.space import kernel_paths


class BnIndicator:
    """``--accuracy bn:CKPT``: the BN-γ indicator of each subnet (higher is better)."""

    def __init__(self, path: str | Path, space) -> None:
        from hwnas.train import load_supernet

        self.space = space
        self.net = load_supernet(path, space)

    @torch.no_grad()
    def block_score(self, s: int, b: int, k, e: float, widths: Sequence[int] = ()) -> float:
        """Mean |γ| of a block's BNs over the channels the subnet uses (its widths'; a
        multi-path layer's BN of its path count)."""
        block = self.net.stages[s][b]
        cin = self.space.block_input_channels(s, b, widths)
        cout = (widths or self.space.stage_widths)[s]
        mid = self.space.mid_channels(cin, e)
        return float(np.mean([block.expand_bn.weight[:mid].abs().mean(),
                              block.dw_norm(kernel_paths(k)).weight[:mid].abs().mean(),
                              block.project_bn.weight[:cout].abs().mean()]))

    def __call__(self, archs: Sequence) -> np.ndarray:
        out = []
        for a in archs:
            arch = self.space.arch(a)
            out.append(sum(self.block_score(s, b, k, e, arch.w)
                           for s, b, k, e in self.space.active_blocks(arch)))
        return np.asarray(out)
