"""Block-wise distillation from a teacher (DNA, Li et al., CVPR 2020).

Every stage of the supernet learns, separately, to reproduce a teacher's features: the
stage's input is the teacher's feature at the stage boundary, its target the teacher's
feature at the next one, its loss the mean squared error relative to the target's
variance. A step draws ``max(1, n_random)`` subnets and trains each stage's choices under
them (stages are independent given the teacher, so one subnet trains one candidate of
every stage). The teacher is the largest subnet of any hwnas supernet checkpoint of the
same space (``--teacher``); its stem and head are copied into the supernet, so the result
is a complete supernet, and its weights are kept in the checkpoint for rating.

Rating (``--accuracy dna:CKPT``): a subnet's block losses on validation images, summed
over stages and negated, so higher is better, as DNA ranks candidates by their summed
block losses. Simplified: DNA searches each block's candidates separately; here each
subnet is rated whole (the same sum). DNA's space has one resolution; here each subnet
is trained and rated at its own resolution against the teacher at that resolution, so
the rating does not see what resolution itself costs in accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hwnas.data import model_input
from hwnas.methods.base import TrainingMethod, batch_statistics


def relative_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, target) / target.var().clamp_min(1e-8)


def teacher_features(teacher, x: torch.Tensor, r: int) -> list[torch.Tensor]:
    with torch.no_grad(), batch_statistics(teacher):
        return teacher.stage_features(model_input(x, r))


def block_losses(net, arch, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each stage of ``arch`` fed the teacher's input feature, against its output; a
    narrower stage (elastic widths) sees and matches the teacher's first channels, the
    ones channel reordering keeps."""
    arch = net.set_active(arch)
    widths = net.space.arch_widths(arch)
    return [relative_mse(net.run_stage(s, feats[s][:, :net.space.block_input_channels(
                s, 0, widths)]), feats[s + 1][:, :widths[s]])
            for s in range(len(feats) - 1)]


class DNA(TrainingMethod):
    name = "dna"

    def __init__(self, space, cfg, net) -> None:
        super().__init__(space, cfg, net)
        from hwnas.train import TrainError, load_supernet

        if not cfg.teacher:
            raise TrainError("method 'dna' needs a teacher: --teacher CKPT (an hwnas "
                             "supernet checkpoint of the same space; its largest subnet "
                             "teaches)")
        if not Path(cfg.teacher).exists():
            raise TrainError(f"teacher checkpoint {cfg.teacher} does not exist")
        device = next(net.parameters()).device
        self.teacher = load_supernet(cfg.teacher, space).to(device)
        self.teacher.set_active(space.largest())
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        copy_stem_and_head(self.teacher, net)

    def step(self, net, x, y, rng, epoch) -> float:
        archs = self.space.sample(max(1, self.cfg.n_random), rng)
        feats: dict[int, list[torch.Tensor]] = {}
        shown = []
        for arch in archs:
            if arch.r not in feats:
                feats[arch.r] = teacher_features(self.teacher, x, arch.r)
            loss = torch.stack(block_losses(net, arch, feats[arch.r])).sum()
            loss.backward()
            shown.append(float(loss.detach()))
        return float(np.mean(shown))

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])


@torch.no_grad()
def copy_stem_and_head(src, dst) -> None:
    """The teacher's stem and head, frozen: DNA trains the stages only."""
    for name in ("stem", "first", "final_expand", "feature_mix", "classifier"):
        part = getattr(dst, name)
        part.load_state_dict(getattr(src, name).state_dict())
        part.requires_grad_(False)


class DnaRating:
    """``--accuracy dna:CKPT``: minus the summed block losses of each subnet on the first
    ``images`` validation images, from a supernet trained with ``--method dna``."""

    def __init__(self, path: str | Path, space, val, images: int = 512,
                 batch_size: int = 128) -> None:
        from hwnas.supernet import Supernet
        from hwnas.train import TrainError, load_checkpoint

        state = load_checkpoint(path, space)
        if state.get("config", {}).get("method") != "dna" or "method_state" not in state:
            raise TrainError(f"{path} was not trained with --method dna (it was trained "
                             f"with {state.get('config', {}).get('method', 'sandwich')!r}); "
                             f"a DNA rating needs a DNA supernet and its teacher")
        shadow = state["config"].get("shadow_bn", True)
        self.net = Supernet(space, shadow_bn=shadow)
        self.teacher = Supernet(space, shadow_bn=shadow)
        self.net.load_state_dict(state["model"])
        self.teacher.load_state_dict(state["method_state"]["teacher"])
        self.net.eval()
        self.teacher.set_active(space.largest())
        self.batches, n = [], 0
        for x, _ in val.batches(batch_size, False):
            if n >= images:
                break
            self.batches.append(x[:images - n])
            n += len(self.batches[-1])
        self._feats: dict[int, list] = {}

    def features(self, r: int) -> list[list[torch.Tensor]]:
        if r not in self._feats:
            self._feats[r] = [teacher_features(self.teacher, x, r) for x in self.batches]
        return self._feats[r]

    @torch.no_grad()
    def __call__(self, archs) -> np.ndarray:
        out = []
        with batch_statistics(self.net):
            for arch in archs:
                total = sum(float(torch.stack(block_losses(self.net, arch, f)).sum())
                            for f in self.features(arch.r))
                out.append(-total / len(self.batches))
        return np.asarray(out)
