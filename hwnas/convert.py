"""Turning a PyTorch module into the files runtimes load: ONNX and TFLite.

Shared by the profiler backends (which time each op as its own model) and the exporter.
Model I/O layouts are a deliberate choice: ONNX keeps PyTorch's NCHW; TFLite models take
and return **NHWC** (what phone pipelines and the GPU delegate expect), by wrapping the
module in a transpose that the converter folds away, so no TRANSPOSE op is left at the
input of a timed model.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from hwnas.errors import BackendError
from hwnas.files import atomic_write

ONNX_OPSET = 17


def to_onnx(module: nn.Module, sample: torch.Tensor, path: str | Path,
            dynamic_batch: bool = False) -> Path:
    """Export to ONNX (TorchScript exporter, opset 17, one file, NCHW input ``input``)."""
    path = Path(path)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (sample,), str(tmp), input_names=["input"],
                              output_names=["output"], opset_version=ONNX_OPSET,
                              dynamic_axes=axes, dynamo=False)

    try:
        return atomic_write(path, write)
    except Exception as exc:  # the exporter raises many types
        raise BackendError(f"ONNX export failed for {path.name}: {exc}") from exc


class ChannelsLast(nn.Module):
    """NHWC in, NHWC out (4-D outputs), around an NCHW module."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(x.permute(0, 3, 1, 2))
        return y.permute(0, 2, 3, 1) if y.dim() == 4 else y


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous() if x.dim() == 4 else x


def _litert_torch():
    """The litert-torch module (imported quietly: it loads JAX and TensorFlow)."""
    try:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            import litert_torch
    except ImportError:
        raise BackendError("converting to TFLite needs litert-torch: pip install "
                           "'hwnas[tflite-convert]'") from None
    return litert_torch


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` with each :class:`hwnas.layers.ConvBNAct`'s
    BatchNorm folded into its convolution. The converter folds them as well (the same TFLite
    ops come out, checked in the tests), but lowering every BatchNorm through torch.export's
    decompositions first costs it time: the small space's 236 ops took 152 s to convert
    unfolded, 131 s folded (one process)."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from hwnas.layers import ConvBNAct

    folded = copy.deepcopy(module).eval()
    for layer in folded.modules():
        if isinstance(layer, ConvBNAct) and isinstance(layer.bn, nn.BatchNorm2d):
            layer.conv = fuse_conv_bn_eval(layer.conv, layer.bn)
            layer.bn = nn.Identity()
    return folded


def to_tflite(module: nn.Module, sample_nchw: torch.Tensor, path: str | Path,
              quantize: str | None = None) -> Path:
    """Convert with litert-torch to a ``.tflite`` file with NHWC I/O (BatchNorm folded
    first: :func:`fold_batchnorm`).

    ``quantize``: None (fp32), ``"fp16"`` (fp16 weights) or ``"int8-dynamic"``
    (dynamic-range int8 weights).
    """
    litert_torch = _litert_torch()
    path = Path(path)
    kwargs = {}
    if quantize is not None:
        kwargs["quant_config"] = _quant_config(quantize)
    wrapped = ChannelsLast(fold_batchnorm(module)).eval()

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            edge = litert_torch.convert(wrapped, (nhwc(sample_nchw),), **kwargs)
            edge.export(str(tmp))

    try:
        return atomic_write(path, write)
    except Exception as exc:
        raise BackendError(f"TFLite conversion failed for {path.name}: {exc}") from exc


def stitch_onnx(models: Sequence["onnx.ModelProto"]) -> "onnx.ModelProto":
    """One ONNX model running single-input, single-output models in sequence (model i's
    output feeds model i+1), e.g. a subnet from its ops' exported files: every name but
    the first input and the last output prefixed ``m<i>/``. Exporting a subnet costs
    ~0.4 s of tracing, stitching its ops' files milliseconds; the tests check that the
    stitched model has the exporter's own nodes for the whole subnet, in order, and
    computes what the PyTorch ops compute."""
    import onnx
    from onnx import helper

    if not models:
        raise BackendError("nothing to stitch")
    nodes, initializers, previous, first = [], [], None, None
    for n, model in enumerate(models):
        graph = model.graph
        constants = {t.name for t in graph.initializer}
        inputs = [v for v in graph.input if v.name not in constants]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise BackendError(f"model {n} of a stitch has {len(inputs)} inputs and "
                               f"{len(graph.output)} outputs; stitching takes one of each")
        x, y = inputs[0], graph.output[0]
        if previous is not None and previous.type != x.type:
            raise BackendError(f"model {n} of a stitch takes {_onnx_type(x)}, the one before "
                               f"it gives {_onnx_type(previous)}")
        last = n == len(models) - 1

        def rename(name: str, n=n, x=x, y=y, last=last) -> str:
            if not name or (name == x.name and previous is None) or (name == y.name and last):
                return name
            if name == x.name:
                return previous.name
            return f"m{n}/{name}"

        for node in graph.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for a in node.attribute):
                raise BackendError(f"model {n} of a stitch has a subgraph ({node.op_type}); "
                                   f"stitching takes flat graphs")
            node = _copy(onnx.NodeProto, node)
            node.name = f"m{n}/{node.name}" if node.name else ""
            node.input[:] = [rename(t) for t in node.input]
            node.output[:] = [rename(t) for t in node.output]
            nodes.append(node)
        for tensor in graph.initializer:
            tensor = _copy(onnx.TensorProto, tensor)
            tensor.name = rename(tensor.name)
            initializers.append(tensor)
        first = first or x
        previous = _copy(onnx.ValueInfoProto, y)
        previous.name = rename(y.name)
    whole = helper.make_graph(nodes, "main", [first], [previous], initializers)
    stitched = helper.make_model(whole, opset_imports=models[0].opset_import,
                                 producer_name="hwnas stitch")
    stitched.ir_version = models[0].ir_version
    return stitched


def _copy(kind, message):
    copied = kind()
    copied.CopyFrom(message)
    return copied


def _onnx_type(value) -> str:
    t = value.type.tensor_type
    return f"{[d.dim_value or d.dim_param for d in t.shape.dim]} (type {t.elem_type})"


class Branches(nn.Module):
    """Independent modules side by side: input i goes through module i to output i."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(modules)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(branch(x) for branch, x in zip(self.branches, xs))


def to_tflite_many(modules: Sequence[tuple[nn.Module, torch.Tensor]],
                   paths: Sequence[str | Path]) -> list[Path]:
    """Convert several (module, NCHW sample) pairs with **one** litert-torch conversion into
    one ``.tflite`` file each (NHWC I/O, as :func:`to_tflite`).

    A conversion has a large fixed cost (export, lowering, flatbuffer), and giving a
    conversion many signatures does not share it (each is lowered on its own: 1.75 s per op
    for 40, against 1.6 s alone). So the modules are converted as independent branches of one
    graph, and the model is split into one model per branch: the same ops, sizes and
    latencies as converting each alone (checked op for op in the tests)."""
    litert_torch = _litert_torch()
    if len(modules) != len(paths) or not modules:
        raise BackendError(f"{len(modules)} modules for {len(paths)} files: give one file each")
    wrapped = Branches([ChannelsLast(fold_batchnorm(module)) for module, _ in modules]).eval()
    try:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            edge = litert_torch.convert(wrapped, tuple(nhwc(x) for _, x in modules))
            raw = edge.model_content()
        parts = split_branches(raw, len(modules))
    except Exception as exc:
        raise BackendError(f"TFLite conversion of {len(modules)} models together failed "
                           f"({Path(paths[0]).name}, ...): {exc}") from exc
    return [atomic_write(path, lambda tmp, b=part: tmp.write_bytes(b))
            for path, part in zip(paths, parts)]


def split_branches(raw: bytes, count: int) -> list[bytes]:
    """Split a converted :class:`Branches` model into one model per branch: for output i,
    the ops it depends on, their tensors and constant buffers, renumbered, with one
    ``serving_default`` signature. Branch i's input and output are found by the converter's
    signature names (``args_i``, ``output_i``), not by position."""
    import copy

    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(raw), 0)
    if len(model.subgraphs or []) != 1 or len(model.signatureDefs or []) != 1:
        raise BackendError("expected one subgraph and one signature in a branches model")
    graph, signature = model.subgraphs[0], model.signatureDefs[0]
    ins = {_name(t.name): t.tensorIndex for t in signature.inputs}
    outs = {_name(t.name): t.tensorIndex for t in signature.outputs}
    if len(ins) != count or len(outs) != count:
        raise BackendError(f"a branches model of {count} has {len(ins)} inputs and "
                           f"{len(outs)} outputs")
    producer = {t: i for i, op in enumerate(graph.operators) for t in op.outputs}
    graph_inputs = set(graph.inputs)
    parts = []
    for i in range(count):
        x, y = ins.get(f"args_{i}"), outs.get(f"output_{i}")
        if x is None or y is None:
            raise BackendError(f"branch {i} has no args_{i}/output_{i} in its signature")
        used_ops, used, todo = set(), set(), [y]
        while todo:  # walk back from the output to the input
            t = todo.pop()
            if t < 0 or t in used:
                continue
            used.add(t)
            if t in producer and producer[t] not in used_ops:
                op = graph.operators[producer[t]]
                used_ops.add(producer[t])
                todo.extend(list(op.inputs) + list(op.intermediates if op.intermediates is not
                                                   None else []))
        if (used & graph_inputs) != {x}:
            raise BackendError(f"branch {i} does not depend on its own input alone")
        tensors = sorted(used)
        index = {t: n for n, t in enumerate(tensors)}
        buffers, buffer_index = [schema.BufferT()], {0: 0}
        new_tensors = []
        for t in tensors:
            tensor = copy.copy(graph.tensors[t])
            if tensor.buffer not in buffer_index:
                buffer_index[tensor.buffer] = len(buffers)
                buffers.append(_AlignedBuffer(_buffer_bytes(model.buffers[tensor.buffer], raw)))
            tensor.buffer = buffer_index[tensor.buffer]
            new_tensors.append(tensor)
        new_ops = []
        for n in sorted(used_ops):
            op = copy.copy(graph.operators[n])
            op.inputs = [index[t] if t >= 0 else -1 for t in op.inputs]
            op.outputs = [index[t] for t in op.outputs]
            if op.intermediates is not None:
                op.intermediates = [index[t] for t in op.intermediates]
            new_ops.append(op)
        sub = schema.SubGraphT(tensors=new_tensors, inputs=[index[x]], outputs=[index[y]],
                               operators=new_ops, name=graph.name)
        sig = schema.SignatureDefT(
            inputs=[schema.TensorMapT(name="args_0", tensorIndex=index[x])],
            outputs=[schema.TensorMapT(name="output_0", tensorIndex=index[y])],
            signatureKey=_name(signature.signatureKey), subgraphIndex=0)
        part = schema.ModelT(version=model.version, operatorCodes=model.operatorCodes,
                             subgraphs=[sub], description=model.description,
                             buffers=buffers, signatureDefs=[sig])
        builder = flatbuffers.Builder(1024)
        builder.Finish(part.Pack(builder), file_identifier=b"TFL3")
        parts.append(bytes(builder.Output()))
    return parts


def stitch(models: Sequence[bytes]) -> bytes:
    """One model running single-input, single-output models in sequence (model i's output
    feeds model i+1), e.g. a subnet from its ops' converted files: their tensors, ops and
    buffers renumbered into one graph, operator codes merged. Converting a whole subnet
    costs ~10 s (torch.export of every block), stitching its already converted ops a few
    ms; the tests check that the stitched model has the converter's own ops, in order, and
    computes what the PyTorch ops compute."""
    import copy

    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    if not models:
        raise BackendError("nothing to stitch")
    tensors, operators, codes, buffers = [], [], [], [_AlignedBuffer(None)]
    code_index: dict[tuple, int] = {}
    first_input = previous = None
    for n, raw in enumerate(models):
        model = schema.ModelT.InitFromPackedBuf(bytearray(raw), 0)
        if len(model.subgraphs or []) != 1:
            raise BackendError(f"model {n} of a stitch has {len(model.subgraphs or [])} "
                               f"subgraphs; stitching takes one each")
        graph = model.subgraphs[0]
        if len(graph.inputs) != 1 or len(graph.outputs) != 1:
            raise BackendError(f"model {n} of a stitch has {len(graph.inputs)} inputs and "
                               f"{len(graph.outputs)} outputs; stitching takes one of each")
        x, y = graph.inputs[0], graph.outputs[0]
        index: dict[int, int] = {}
        if previous is not None:
            before, here = tensors[previous], graph.tensors[x]
            if list(before.shape) != list(here.shape) or before.type != here.type:
                raise BackendError(f"model {n} of a stitch takes {list(here.shape)}, the one "
                                   f"before it gives {list(before.shape)}")
            index[x] = previous
        buffer_index = {0: 0}
        for t, tensor in enumerate(graph.tensors):
            if t in index:
                continue
            tensor = copy.copy(tensor)
            if tensor.buffer not in buffer_index:
                buffer_index[tensor.buffer] = len(buffers)
                buffers.append(_AlignedBuffer(_buffer_bytes(model.buffers[tensor.buffer], raw)))
            tensor.buffer = buffer_index[tensor.buffer]
            tensor.name = f"m{n}/{_name(tensor.name)}"
            index[t] = len(tensors)
            tensors.append(tensor)
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            ident = (code.builtinCode, code.deprecatedBuiltinCode, code.version,
                     _name(code.customCode) if code.customCode is not None else None)
            if ident not in code_index:
                code_index[ident] = len(codes)
                codes.append(code)
            op = copy.copy(op)
            op.opcodeIndex = code_index[ident]
            op.inputs = [index[t] if t >= 0 else -1 for t in op.inputs]
            op.outputs = [index[t] for t in op.outputs]
            if op.intermediates is not None:
                op.intermediates = [index[t] for t in op.intermediates]
            operators.append(op)
        first_input = index[x] if first_input is None else first_input
        previous = index[y]
        version, description = model.version, model.description
    graph = schema.SubGraphT(tensors=tensors, inputs=[first_input], outputs=[previous],
                             operators=operators, name="main")
    sig = schema.SignatureDefT(
        inputs=[schema.TensorMapT(name="args_0", tensorIndex=first_input)],
        outputs=[schema.TensorMapT(name="output_0", tensorIndex=previous)],
        signatureKey="serving_default", subgraphIndex=0)
    whole = schema.ModelT(version=version, operatorCodes=codes, subgraphs=[graph],
                          description=description, buffers=buffers, signatureDefs=[sig])
    builder = flatbuffers.Builder(1024)
    builder.Finish(whole.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _buffer_bytes(buffer, raw: bytes) -> bytes | None:
    """A buffer's data, whether inline or (models over 2 GB) at an offset in the file."""
    if buffer.data is not None:
        return bytes(buffer.data)
    if buffer.offset > 1:
        return raw[buffer.offset:buffer.offset + buffer.size]
    return None


class _AlignedBuffer:
    """A constant buffer written 16-byte aligned, as the converter writes them (kernels
    read weights in place)."""

    def __init__(self, data: bytes | None) -> None:
        self.data = data

    def Pack(self, builder):  # noqa: N802 (the flatbuffers object API's name)
        from ai_edge_litert import schema_py_generated as schema

        vector = None
        if self.data is not None:
            builder.StartVector(1, len(self.data), 16)
            builder.head = builder.head - len(self.data)
            builder.Bytes[builder.head:builder.head + len(self.data)] = self.data
            vector = builder.EndVector()
        schema.BufferStart(builder)
        if vector is not None:
            schema.BufferAddData(builder, vector)
        return schema.BufferEnd(builder)


def converter_version() -> str:
    """The PyTorch -> TFLite converter's version with torch's (what a converted file
    depends on), or "" when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"litert-torch-{version('litert-torch')}-torch-{torch.__version__}"
    except PackageNotFoundError:
        return ""


def _quant_config(kind: str):
    from litert_torch.generative.quantize import quant_recipes  # type: ignore

    if kind == "fp16":
        return quant_recipes.full_fp16_recipe()
    if kind == "int8-dynamic":
        return quant_recipes.full_dynamic_recipe()
    raise BackendError(f"unknown TFLite quantisation {kind!r}; allowed: fp16, int8-dynamic")


@contextlib.contextmanager
def _quiet():
    """Silence a converter's progress printing on stdout (its stderr logs stay)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
