"""Once-for-All's released artefacts, read into hwnas values.

Users of the default space hold what Once-for-All (Cai et al., ICLR 2020,
github.com/mit-han-lab/once-for-all) released for its MobileNetV3 space; this module turns
each into the value hwnas works with, and nothing else:

* a supernet checkpoint (``ofa_mbv3_d234_e346_k357_w1.0`` / ``_w1.2``) -> an hwnas
  checkpoint for :class:`~hwnas.supernet.Supernet` (:func:`import_supernet`);
* a specialised subnet's ``net.config`` (+ ``run.config``) -> an :class:`~hwnas.space.Arch`
  (:func:`arch_from_net_config`);
* the ImageNet accuracy predictor ``acc_predictor.pth`` -> an accuracy objective
  (:class:`OfaAccuracyPredictor`);
* the ``<r>_lookup_table.yaml`` latency tables -> an hwnas lookup table
  (:func:`import_latency_tables`).

Checkpoints are read with ``torch.load(weights_only=True)`` and YAML with
``yaml.safe_load``; OFA's own code is never imported (its ``ofa`` package is the reference
the tests compare with). Every refusal names the file and the key, field or shape that
does not fit.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hwnas.errors import ArchError, HwnasError, LutError, read_json, read_yaml
from hwnas.space import OFA_RESOLUTIONS, Arch, SearchSpace, format_resolutions, get_space


class OfaError(HwnasError, ValueError):
    """A Once-for-All file is unreadable, of another network, or outside hwnas's space."""


# ------------------------------------------------------------------- supernet weights
_BN = r"\.bn(?:\.bn)?\.(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"
_CONV = r"\.conv(?:\.conv)?\.weight"
_BLOCK = r"blocks\.(?P<n>\d+)\.(?:conv|mobile_inverted_conv)\."
# OFA key pattern -> (hwnas key in the first block, hwnas key in a stage's block); the
# optional repeats accept both spellings (dynamic layers' ``bn.bn``/``conv.conv`` and
# static ones' ``bn``/``conv``), the block prefix both the current and the legacy name.
_RULES: list[tuple[re.Pattern, str | None, str | None]] = [
    (re.compile(r"first_conv" + _CONV), "stem.conv.weight", None),
    (re.compile(r"first_conv" + _BN), "stem.bn.{p}", None),
    (re.compile(_BLOCK + "inverted_bottleneck" + _CONV), None, "expand_conv.weight"),
    (re.compile(_BLOCK + "inverted_bottleneck" + _BN), None, "expand_bn.{p}"),
    (re.compile(_BLOCK + "depth_conv" + _CONV), "first.depth_conv.conv.weight",
     "dw_conv.weight"),
    (re.compile(_BLOCK + r"depth_conv\.conv\.(?P<big>\d+)to(?P<small>\d+)_matrix"), None,
     "kernel_transforms.{big}to{small}"),
    (re.compile(_BLOCK + "depth_conv" + _BN), "first.depth_conv.bn.{p}", "dw_bn.{p}"),
    (re.compile(_BLOCK + r"depth_conv\.se\.fc\.(?P<fc>reduce|expand)\.(?P<wb>weight|bias)"),
     None, "se_{fc}.{wb}"),
    (re.compile(_BLOCK + "point_linear" + _CONV), "first.point_linear.conv.weight",
     "project_conv.weight"),
    (re.compile(_BLOCK + "point_linear" + _BN), "first.point_linear.bn.{p}",
     "project_bn.{p}"),
    (re.compile(r"final_expand_layer" + _CONV), "final_expand.conv.weight", None),
    (re.compile(r"final_expand_layer" + _BN), "final_expand.bn.{p}", None),
    (re.compile(r"feature_mix_layer" + _CONV), "feature_mix.conv.weight", None),
    (re.compile(r"classifier\.linear(?:\.linear)?\.(?P<wb>weight|bias)"),
     "classifier.linear.{wb}", None),
]


def hwnas_key(ofa_key: str, max_depth: int) -> str | None:
    """The hwnas supernet key of one OFA state-dict key (None: not one of OFA's MobileNetV3
    keys). OFA numbers blocks 0 (the first block), then ``max_depth`` per stage."""
    key = ofa_key[len("module."):] if ofa_key.startswith("module.") else ofa_key
    for pattern, first, stage in _RULES:
        m = pattern.fullmatch(key)
        if m is None:
            continue
        fields = m.groupdict()
        n = int(fields.pop("n")) if "n" in fields else None
        if n is None:
            return first.format(**fields) if first else None
        if n == 0:
            return first.format(**fields) if first else None
        if stage is None:
            return None
        s, b = divmod(n - 1, max_depth)
        return f"stages.{s}.{b}." + stage.format(**fields)
    return None


def read_ofa_state_dict(path: str | Path) -> dict[str, Any]:
    """A state dict from an OFA checkpoint file: ``{"state_dict": ...}`` or a bare one,
    loaded with ``weights_only=True`` (a pickle that would run code is refused)."""
    import torch

    from hwnas.files import load_tensors

    path = Path(path)
    obj = load_tensors(path, OfaError, "PyTorch checkpoint")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise OfaError(f"{path}: holds no state dict (expected a mapping of names to tensors, "
                       f"or {{'state_dict': ...}})")
    bad = next((k for k, v in obj.items() if not isinstance(k, str)
                or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise OfaError(f"{path}: entry {bad!r} is not a named tensor")
    return dict(obj)


def supernet_state(ofa_state: Mapping[str, Any], space: SearchSpace,
                   source: str = "checkpoint") -> dict[str, Any]:
    """OFA's MobileNetV3 supernet weights as an hwnas :class:`Supernet` state dict.

    Every key of the file must map to one supernet entry of the same shape, and every
    entry but BN's ``num_batches_tracked`` counters must be given; otherwise this names
    the first key (or shape) that does not fit."""
    from hwnas.supernet import Supernet

    target = Supernet(space).state_dict()
    out: dict[str, Any] = {}
    for key, value in ofa_state.items():
        mine = hwnas_key(key, space.max_depth)
        if mine is None or mine not in target:
            raise OfaError(f"{source}: key {key!r} is not part of Once-for-All's MobileNetV3 "
                           f"supernet for space {space.name!r} (another network, or another "
                           f"depth/width?)")
        if mine in out:
            raise OfaError(f"{source}: key {key!r} repeats {mine!r} under another spelling")
        if tuple(value.shape) != tuple(target[mine].shape):
            raise OfaError(f"{source}: {key!r} has shape {tuple(value.shape)}, space "
                           f"{space.name!r} needs {tuple(target[mine].shape)} (width "
                           f"{space.width_mult:g}; try the other --space)")
        out[mine] = value.detach().to(target[mine].dtype).clone()
    missing = [k for k in target if k not in out and not k.endswith("num_batches_tracked")]
    if missing:
        raise OfaError(f"{source}: lacks {len(missing)} supernet weight(s), first "
                       f"{missing[0]!r}; a truncated or partial checkpoint?")
    for k in target:
        out.setdefault(k, target[k])
    return out


def import_supernet(path: str | Path, space: str | SearchSpace, out: str | Path,
                    resolutions: Sequence[int] = OFA_RESOLUTIONS) -> Path:
    """Write an hwnas checkpoint with the weights of an OFA supernet file. The checkpoint's
    space is ``space`` at ``resolutions`` (default: the 128-224 px OFA trained at); any
    resolution set of the same space loads it."""
    from hwnas.train import CHECKPOINT_FORMAT
    from hwnas.files import atomic_torch_save

    sp = get_space(space).with_resolutions(resolutions)
    path = Path(path)
    state = supernet_state(read_ofa_state_dict(path), sp, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    ckpt = {"format": CHECKPOINT_FORMAT, "epoch": -1, "model": state,
            "space": sp.to_dict(), "space_id": sp.id, "config": {},
            "history": [], "source": {"kind": "once-for-all", "file": path.name,
                                      "sha256": digest}}
    return atomic_torch_save(ckpt, Path(out))


# ------------------------------------------------------------------ specialised subnets
_ACT = {"relu": "relu", "h_swish": "hswish"}
_LAYERS = ("MBConvLayer", "MBInvertedConvLayer")


def _field(obj: Any, name: str, where: str) -> Any:
    if not isinstance(obj, Mapping) or name not in obj:
        raise ArchError(f"{where} lacks the field {name!r}")
    return obj[name]


def _detect_space(config: Mapping, where: str) -> SearchSpace:
    stem = _field(_field(config, "first_conv", where), "out_channels", f"{where} first_conv")
    for name in ("default", "default-w1.2"):
        sp = get_space(name)
        if sp.stem_channels == stem:
            return sp.with_resolutions(OFA_RESOLUTIONS)
    raise ArchError(f"{where}: first_conv.out_channels = {stem!r} fits neither Once-for-All "
                    f"width (16: default, 24: default-w1.2)")


def arch_from_net_config(config: Mapping[str, Any], image_size: int | None = None,
                         space: SearchSpace | str | None = None,
                         where: str = "net.config") -> tuple[Arch, SearchSpace]:
    """The arch (and its space) of an OFA MobileNetV3 ``net.config``.

    Without ``space`` the width is read from the config (``default`` or ``default-w1.2``)
    at Once-for-All's training resolutions (128-224 px, step 4). Everything the space
    cannot express is refused, naming the block and the field."""
    if not isinstance(config, Mapping):
        raise ArchError(f"{where}: not a network config (a JSON object)")
    name = config.get("name")
    if name != "MobileNetV3":
        raise ArchError(f"{where}: a {name!r} network, not Once-for-All's MobileNetV3; "
                        f"hwnas's default spaces express MobileNetV3 subnets only")
    sp = get_space(space) if space is not None else _detect_space(config, where)
    if image_size is None:
        raise ArchError(f"{where}: no input resolution; give the run.config (image_size)")

    def expect(value: Any, wanted: Any, path: str) -> None:
        if value != wanted:
            raise ArchError(f"{where}: {path} = {value!r} does not fit space {sp.name!r}; "
                            f"it needs {wanted!r}")

    first = _field(config, "first_conv", where)
    expect(_field(first, "in_channels", f"{where} first_conv"), sp.in_channels,
           "first_conv.in_channels")
    expect(first.get("out_channels"), sp.stem_channels, "first_conv.out_channels")
    expect(first.get("kernel_size"), 3, "first_conv.kernel_size")
    expect(first.get("stride"), 2, "first_conv.stride")
    blocks = _field(config, "blocks", where)
    if not isinstance(blocks, list) or not blocks:
        raise ArchError(f"{where}: 'blocks' must be a non-empty list")
    layers = []
    for i, block in enumerate(blocks):
        key = "conv" if isinstance(block, Mapping) and "conv" in block else \
            "mobile_inverted_conv"
        layer = _field(block, key, f"{where} blocks[{i}]")
        if _field(layer, "name", f"{where} blocks[{i}].{key}") not in _LAYERS:
            raise ArchError(f"{where}: blocks[{i}].{key}.name = {layer['name']!r}; expected "
                            f"one of {list(_LAYERS)}")
        layers.append((f"blocks[{i}].{key}", layer, block.get("shortcut")))
    path, layer, shortcut = layers[0]
    expect(layer.get("expand_ratio"), 1, f"{path}.expand_ratio")
    expect(layer.get("kernel_size"), 3, f"{path}.kernel_size")
    expect(layer.get("out_channels"), sp.first_block_channels, f"{path}.out_channels")
    expect(_ACT.get(layer.get("act_func")), sp.first_block_act, f"{path}.act_func")
    depths, kernels, expands = [], [], []
    i, cin = 1, sp.first_block_channels
    for s, spec in enumerate(sp.stages):
        width = sp.stage_widths[s]
        n = 0
        while i < len(layers) and layers[i][1].get("out_channels") == width:
            path, layer, shortcut = layers[i]
            k, e = layer.get("kernel_size"), layer.get("expand_ratio")
            if k not in sp.kernels:
                raise ArchError(f"{where}: {path}.kernel_size = {k!r} is not allowed; "
                                f"allowed: {list(sp.kernels)}")
            if e not in sp.expands:
                raise ArchError(f"{where}: {path}.expand_ratio = {e!r} is not allowed; "
                                f"allowed: {list(sp.expands)}")
            expect(layer.get("in_channels"), cin, f"{path}.in_channels")
            expect(layer.get("stride"), spec.stride if n == 0 else 1, f"{path}.stride")
            expect(_ACT.get(layer.get("act_func")), spec.act, f"{path}.act_func")
            expect(bool(layer.get("use_se")), spec.se, f"{path}.use_se")
            if layer.get("mid_channels") is not None:
                expect(layer["mid_channels"], sp.mid_channels(cin, e), f"{path}.mid_channels")
            residual = (spec.stride if n == 0 else 1) == 1 and cin == width
            expect(shortcut is not None, residual, f"{path[:path.index(']') + 1]}.shortcut "
                                                   f"present")
            kernels.append(k)
            expands.append(e)
            cin, n, i = width, n + 1, i + 1
        if n not in sp.depths:
            raise ArchError(f"{where}: stage {s} (width {width}) has {n} block(s); allowed "
                            f"depths: {list(sp.depths)}")
        depths.append(n)
        pad = sp.max_depth - n
        kernels += [0] * pad
        expands += [0] * pad
    if i < len(layers):
        path, layer, _ = layers[i]
        raise ArchError(f"{where}: {path}.out_channels = {layer.get('out_channels')!r} fits "
                        f"no stage of space {sp.name!r} (stage widths "
                        f"{list(sp.stage_widths)})")
    head = _field(config, "final_expand_layer", where)
    expect(head.get("out_channels") if isinstance(head, Mapping) else head,
           sp.final_expand_channels, "final_expand_layer.out_channels")
    mix = _field(config, "feature_mix_layer", where)
    expect(mix.get("out_channels") if isinstance(mix, Mapping) else mix,
           sp.feature_mix_channels, "feature_mix_layer.out_channels")
    cls = _field(config, "classifier", where)
    expect(cls.get("out_features") if isinstance(cls, Mapping) else cls, sp.num_classes,
           "classifier.out_features")
    if image_size not in sp.resolutions:
        raise ArchError(f"{where}: image_size = {image_size!r} is outside the resolutions of "
                        f"space {sp.name!r} ({format_resolutions(sp.resolutions)}); pass "
                        f"--space {sp.name.partition('@')[0]}@"
                        f"{format_resolutions(set(sp.resolutions) | {int(image_size)})} "
                        f"to accept it")
    return sp.arch(r=image_size, d=depths, k=kernels, e=expands), sp


def read_net_config(path: str | Path, run_config: str | Path | None = None,
                    space: SearchSpace | str | None = None,
                    image_size: int | None = None) -> tuple[Arch, SearchSpace]:
    """:func:`arch_from_net_config` on files: ``net.config`` and its ``run.config`` (by
    default the one beside it); ``image_size`` overrides the run config's."""
    path = Path(path)
    config = read_json(path, ArchError, "net.config")
    if image_size is None:
        run = Path(run_config) if run_config else path.with_name("run.config")
        if run_config or run.exists():
            rc = read_json(run, ArchError, "run.config")
            image_size = rc.get("image_size") if isinstance(rc, Mapping) else None
            if isinstance(image_size, list) and len(image_size) == 1:
                image_size = image_size[0]
            if not isinstance(image_size, int) or isinstance(image_size, bool):
                raise ArchError(f"{run}: needs an integer 'image_size', got {image_size!r}")
    return arch_from_net_config(config, image_size, space, str(path))


# ------------------------------------------------------------------ accuracy predictor
PREDICTOR_RESOLUTIONS = (160, 176, 192, 208, 224)
_PREDICTOR_SHAPES = {"0.weight": (400, 128), "0.bias": (400,), "2.weight": (400, 400),
                     "2.bias": (400,), "4.weight": (400, 400), "4.bias": (400,),
                     "6.weight": (1, 400), "6.bias": (1,)}


class OfaAccuracyPredictor:
    """Once-for-All's ImageNet top-1 predictor (``acc_predictor.pth``) as an accuracy
    objective: an MLP 128-400-400-400-1 on OFA's encoding (per block a one-hot kernel of
    3/5/7 and expand of 3/4/6, zero past a stage's depth, then a resolution one-hot at
    ``(r - 112) // 16``), returning top-1 as a fraction.

    Its domain is what it was fitted on: subnets of the w1.2 supernet at 160-224 px in
    steps of 16 (OFA's tutorial searches those; the first-layer weights of the three
    lower resolution slots are still within their random-initialisation bound, so they
    were never trained, and a size between two steps would be read as the lower one).
    Archs outside it are refused, not extrapolated."""

    def __init__(self, path: str | Path, space: SearchSpace | str = "default-w1.2") -> None:
        import torch

        self.path, self.space = Path(path), get_space(space)
        ref = get_space("default-w1.2")
        if self.space.weights_id != ref.weights_id:
            raise OfaError(f"{self.path} is OFA's predictor for the w1.2 supernet "
                           f"(default-w1.2); space {self.space.name!r} has other widths or "
                           f"choices, where its numbers would mean nothing")
        state = read_ofa_state_dict(self.path)
        for key, shape in _PREDICTOR_SHAPES.items():
            if key not in state:
                raise OfaError(f"{self.path}: lacks {key!r}; OFA's accuracy predictor is an "
                               f"MLP 128-400-400-400-1 (keys {sorted(_PREDICTOR_SHAPES)})")
            if tuple(state[key].shape) != shape:
                raise OfaError(f"{self.path}: {key!r} has shape {tuple(state[key].shape)}, "
                               f"OFA's accuracy predictor has {shape}")
        extra = sorted(set(state) - set(_PREDICTOR_SHAPES))
        if extra:
            raise OfaError(f"{self.path}: unexpected entry {extra[0]!r}; OFA's accuracy "
                           f"predictor has only {sorted(_PREDICTOR_SHAPES)}")
        self.model = torch.nn.Sequential(
            torch.nn.Linear(128, 400), torch.nn.ReLU(), torch.nn.Linear(400, 400),
            torch.nn.ReLU(), torch.nn.Linear(400, 400), torch.nn.ReLU(),
            torch.nn.Linear(400, 1)).eval()
        self.model.load_state_dict({k: state[k].float() for k in _PREDICTOR_SHAPES})
        sp = self.space
        self._r_slot = np.array([(r - 112) // 16 for r in sp.resolutions])
        self.calls = 0

    def check_resolutions(self, resolutions: Sequence[int]) -> None:
        """Refuse resolutions outside the predictor's domain."""
        bad = sorted(set(resolutions) - set(PREDICTOR_RESOLUTIONS))
        if bad:
            raise OfaError(f"OFA's accuracy predictor was fitted at "
                           f"{list(PREDICTOR_RESOLUTIONS)} px; resolution {bad[0]} is outside "
                           f"its domain (restrict the search with --resolutions "
                           f"{','.join(map(str, PREDICTOR_RESOLUTIONS))})")

    def features(self, archs: Sequence[Arch] | np.ndarray) -> np.ndarray:
        """OFA's 128-wide encoding of each arch, vectorised over the batch."""
        from hwnas.ops import encode_batch

        sp = self.space
        X = encode_batch(archs, sp)
        self.check_resolutions([sp.resolutions[i] for i in np.unique(X[:, -1])])
        n, md, step = len(X), sp.max_depth, 1 + 2 * sp.max_depth
        F = np.zeros((n, 128), dtype=np.float32)
        rows = np.arange(n)
        for s in range(sp.n_stages):
            depth = np.asarray(sp.depths)[X[:, s * step]]
            for b in range(md):
                i = s * md + b
                on = depth > b
                F[rows[on], 3 * i + X[on, s * step + 1 + b]] = 1
                F[rows[on], 60 + 3 * i + X[on, s * step + 1 + md + b]] = 1
        F[rows, 120 + self._r_slot[X[:, -1]]] = 1
        return F

    def __call__(self, archs: Sequence[Arch] | np.ndarray) -> np.ndarray:
        """Predicted ImageNet top-1 (0..1) of each arch."""
        import torch

        F = self.features(archs)
        self.calls += len(F)
        with torch.no_grad():
            return self.model(torch.from_numpy(F)).numpy()[:, 0].astype(np.float64)


# ------------------------------------------------------------------- latency tables
_TABLE_FILE = re.compile(r"(?P<r>\d+)_lookup_table\.yaml")
_KEY_SYNTAX = re.compile(
    r"(?:Conv|Conv_1|Conv_2|AvgPool2D|Logits)-input:\d+x\d+x\d+-output:\d+(?:x\d+x\d+)?"
    r"|expanded_conv-input:\d+x\d+x\d+-output:\d+x\d+x\d+-expand:\d+-kernel:\d+-stride:\d+"
    r"-idskip:[01]-se:[01]-hs:[01]")


def ofa_keys(op) -> list[str]:
    """The keys of OFA's latency tables that make up one hwnas op (OFA times global
    pooling and the feature-mix conv apart; hwnas's feature-mix op holds both)."""
    out_hw = op.out_hw
    if op.kind == "stem":
        return [f"Conv-input:{op.hw}x{op.hw}x{op.cin}-output:{out_hw}x{out_hw}x{op.cout}"]
    if op.kind in ("first", "mbconv"):
        return [f"expanded_conv-input:{op.hw}x{op.hw}x{op.cin}-output:{out_hw}x{out_hw}x"
                f"{op.cout}-expand:{op.mid}-kernel:{op.kernel}-stride:{op.stride}-idskip:"
                f"{int(op.residual)}-se:{int(op.se_mid > 0)}-hs:{int(op.act == 'hswish')}"]
    if op.kind == "final_expand":
        return [f"Conv_1-input:{op.hw}x{op.hw}x{op.cin}-output:{op.hw}x{op.hw}x{op.cout}"]
    if op.kind == "feature_mix":
        return [f"AvgPool2D-input:{op.hw}x{op.hw}x{op.cin}-output:1x1x{op.cin}",
                f"Conv_2-input:1x1x{op.cin}-output:1x1x{op.cout}"]
    return [f"Logits-input:1x1x{op.cin}-output:{op.cout}"]


@dataclass
class ImportedTable:
    """An imported lookup table: where it went, and what was read."""

    table: Path
    predictor: Path
    rows: int
    files: dict[int, str]
    notes: list[str] = field(default_factory=list)


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, LutError, "latency table")
    if not isinstance(data, dict) or not data:
        raise LutError(f"{path}: expected a map of OFA latency keys to {{count, mean, std}}")
    return data


def _entry(path: Path, key: Any, value: Any) -> tuple[float, float, float]:
    """(mean, std, count) of one table entry, checked."""
    if not isinstance(key, str) or not _KEY_SYNTAX.fullmatch(key):
        raise LutError(f"{path}: key {key!r} is not an OFA latency-table key (e.g. "
                       f"'expanded_conv-input:HxWxC-output:HxWxC-expand:M-kernel:k-stride:s-"
                       f"idskip:0|1-se:0|1-hs:0|1')")
    if not isinstance(value, Mapping) or "mean" not in value:
        raise LutError(f"{path}: {key}: needs a map with 'mean' (ms), and 'count' and 'std'")
    nums = []
    for name, default in (("mean", None), ("std", float("nan")), ("count", float("nan"))):
        v = value.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                (name == "mean" and not (np.isfinite(v) and v > 0)):
            raise LutError(f"{path}: {key}: {name} = {v!r} is not a "
                           f"{'positive number' if name == 'mean' else 'number'}")
        nums.append(float(v))
    return nums[0], nums[1], nums[2]


def latency_rows(folder: str | Path, space: SearchSpace) -> tuple[list[dict], dict, list[str]]:
    """LUT rows of ``space`` from OFA's ``<r>_lookup_table.yaml`` files in ``folder``:
    (rows, {resolution: file sha256}, notes). Every op of the space must be there, and
    every key of a file must belong to an op of the space at its resolution."""
    from hwnas.ops import unique_ops

    folder = Path(folder)
    if not folder.is_dir():
        raise LutError(f"{folder}: not a folder (expected OFA's <r>_lookup_table.yaml files)")
    found = {int(m["r"]): p for p in sorted(folder.iterdir())
             if (m := _TABLE_FILE.fullmatch(p.name))}
    missing = [r for r in space.resolutions if r not in found]
    if missing:
        raise LutError(f"{folder}: no table for resolution(s) {missing} of space "
                       f"{space.name!r} (found {sorted(found) or 'none'}); import a space at "
                       f"the tables' resolutions, e.g. --space "
                       f"{space.name.partition('@')[0]}@{format_resolutions(found) or '...'}")
    notes = [f"{found[r].name}: resolution {r} is not in space {space.name!r}, not imported"
             for r in sorted(set(found) - set(space.resolutions))]
    rows, digests = [], {}
    for r in space.resolutions:
        path = found[r]
        data = _read_yaml(path)
        entries = {k: _entry(path, k, v) for k, v in data.items()}
        digests[r] = hashlib.sha256(path.read_bytes()).hexdigest()
        used = set()
        for op in unique_ops(space, [r]):
            keys = ofa_keys(op)
            absent = [k for k in keys if k not in entries]
            if absent:
                layer_input = absent[0].split("-output:")[0] + "-"
                near = next((k for k in entries if k.startswith(layer_input)), None)
                hint = f" (it has {near!r}: a table of another width? try the other " \
                       f"--space)" if near else ""
                raise LutError(f"{path}: lacks {absent[0]!r}, the {op.kind} op {op.key} of "
                               f"space {space.name!r}{hint}")
            used.update(keys)
            parts = [entries[k] for k in keys]
            rows.append({**op.row(), "latency_ms": sum(p[0] for p in parts),
                         "p10_ms": float("nan"), "p90_ms": float("nan"),
                         "spread": float("nan"), "count": min(p[2] for p in parts),
                         "attempts": 1, "std_ms": float(np.sqrt(sum(p[1] ** 2 for p in parts))),
                         "ofa_keys": "+".join(keys), "r": r,
                         "statistic": "mean of OFA's runs (sum of its rows)"})
        foreign = sorted(set(entries) - used)
        if foreign:
            raise LutError(f"{path}: key {foreign[0]!r} is no op of space {space.name!r} at "
                           f"{r} px ({len(foreign)} such key(s); a table of another width? "
                           f"try the other --space)")
    return rows, digests, notes


def import_latency_tables(folder: str | Path, device: str, space: SearchSpace | str,
                          lut_dir: str | Path = "lut") -> ImportedTable:
    """``lut/<device>.parquet`` from OFA's latency tables, and ``<device>.predictor.json``
    (its LUT sum, which is what OFA's own ``LatencyTable`` predicts), so predictors,
    search and export use the device like a profiled one."""
    from hwnas.lut import LatencyTable, table_paths, write_table
    from hwnas.predictor import LutSum, default_predictor_path

    import pandas as pd

    sp = get_space(space)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", device or ""):
        raise LutError(f"device name {device!r} must be letters, digits, '.', '_' or '-'")
    rows, digests, notes = latency_rows(folder, sp)
    op_path, _ = table_paths(device, lut_dir)
    fingerprint = {"device": device, "source": "Once-for-All latency lookup table",
                   "statistic": "mean (ms) of OFA's runs", "tables": {
                       str(r): digests[r][:16] for r in sorted(digests)}}
    write_table(pd.DataFrame(rows), op_path, {
        "fingerprint": fingerprint, "space": sp.to_dict(), "device": device,
        "imported_from": str(Path(folder).resolve()),
        "note": "feature_mix = OFA's AvgPool2D + Conv_2; p10/p90/spread not reported by OFA"})
    table = LatencyTable.load(op_path, sp)
    predictor = LutSum(table)
    predictor.extra = {"device": device, "source": "Once-for-All latency lookup table"}
    pred_path = predictor.save(default_predictor_path(device, lut_dir))
    return ImportedTable(op_path, pred_path, len(rows), {r: p for r, p in digests.items()},
                         notes)


__all__ = ["ImportedTable", "OFA_RESOLUTIONS", "OfaAccuracyPredictor", "OfaError",
           "arch_from_net_config", "hwnas_key", "import_latency_tables", "import_supernet",
           "latency_rows", "ofa_keys", "read_net_config", "read_ofa_state_dict",
           "supernet_state"]
