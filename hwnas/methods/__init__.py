"""Supernet training methods, one module each, chosen by name (``hwnas train --method``).

- ``sandwich``: the sandwich rule with in-place distillation (BigNAS), the default;
- ``fairnas``: strict fairness (FairNAS);
- ``attentive``: best/worst Pareto-attentive sampling (AttentiveNAS);
- ``pinas``: cross-path learning with a mean teacher (Pi-NAS);
- ``dna``: block-wise distillation from a teacher (DNA).

Two ratings of subnets that are not top-1 come with them: DNA's block losses
(``--accuracy dna:CKPT``) and BN-NAS's BN-γ indicator (``--accuracy bn:CKPT``).
"""

from __future__ import annotations

from hwnas.methods.attentive import Attentive
from hwnas.methods.base import TrainingMethod
from hwnas.methods.dna import DNA
from hwnas.methods.fairnas import FairNAS
from hwnas.methods.pinas import PiNAS
from hwnas.methods.sandwich import Sandwich

METHODS: dict[str, type[TrainingMethod]] = {
    m.name: m for m in (Sandwich, FairNAS, Attentive, PiNAS, DNA)}

__all__ = ["METHODS", "TrainingMethod"]
