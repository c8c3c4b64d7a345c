"""Saving and loading models and pairs, without ever unpickling code.

Weights are stored as safetensors (a format that holds tensors and string
metadata only). A plain PyTorch state dict (``.pt``/``.pth``) can be read too,
through ``torch.load(weights_only=True)``, which refuses any pickled object
other than tensors and plain containers: a checkpoint that would run code
when unpickled is rejected with a clear error. Every file is written
atomically (temporary file, then rename), so an interrupted save leaves the
previous complete file or none.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from ._io import atomic_write_bytes, atomic_write_text
from ._version import __version__
from .attribution import Attributions
from .models import check_finite_weights
from .pruning import ModelPair

__all__ = ["load_attributions", "load_model", "load_onnx", "load_pair", "load_state_dict",
           "save_attributions", "save_model", "save_pair"]

SAFE_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def _fold_pruning(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Turn ``x_orig``/``x_mask`` pairs (a model saved with pruning hooks) into plain ``x``."""
    out = dict(state)
    for key in [k for k in state if k.endswith("_orig")]:
        base = key[: -len("_orig")]
        if base + "_mask" in state:
            out[base] = state[key] * state[base + "_mask"]
            del out[key], out[base + "_mask"]
    return out


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from safetensors, or from a ``torch.save`` file with weights only.

    State dicts saved while ``torch.nn.utils.prune`` hooks were attached
    (``weight_orig`` and ``weight_mask`` keys) are folded into plain
    ``weight = weight_orig * weight_mask``, so they load into the dense
    architecture.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a state dict of tensors: a pickle that holds other
        Python objects (which could execute code) is refused as unsafe, naming
        what it imports, and nothing in it is run; a file that is no torch
        checkpoint at all (random bytes, truncated, another format) is
        reported as corrupt, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    if path.suffix in SAFE_SUFFIXES:
        try:
            with safetensors.safe_open(str(path), framework="pt") as fh:
                state = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"Could not read {path} as safetensors: {exc}") from None
        return _fold_pruning(state)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError ...
        raise _load_error(path, exc) from None
    if isinstance(state, nn.Module) or not isinstance(state, Mapping):
        raise ValueError(f"Expected {path} to hold a state dict (a mapping of names to tensors), "
                         f"got {type(state).__name__}.")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"Expected {path} to map names to tensors; entries {bad[:5]} are not "
                         "tensors.")
    return _fold_pruning(dict(state))


def _safe_global(name: str) -> bool:
    """Whether torch's weights-only unpickler accepts the global ``module.name``.

    Asks torch's own allowlist (private, so with a conservative fallback: the
    tensor-rebuild functions, storages and dtypes).
    """
    try:
        from torch import _weights_only_unpickler as unpickler

        allowed = set(unpickler._get_allowed_globals())
    except Exception:  # noqa: BLE001 - a torch without that helper
        allowed = set()
    if name in allowed or name in ("__builtin__.set", "builtins.set", "collections.OrderedDict"):
        return True
    return not allowed and name.startswith("torch.") and ".nn.modules." not in name


_NOT_TORCH = ("not a torch checkpoint (corrupt, truncated or another format). xprune reads "
              "safetensors files and state dicts saved with torch.save(model.state_dict())")


def _pickle_globals(data: bytes, max_pickles: int = 1) -> list[str] | None:
    """The ``module.name`` globals that the pickle stream(s) at the start of ``data`` import.

    Reads up to ``max_pickles`` consecutive pickles (a legacy ``torch.save``
    file holds four, then raw storage bytes) with :mod:`pickletools`, which
    only parses opcodes and never imports or runs anything. ``None`` when the
    first one is not a well-formed pickle.
    """
    stream, found = io.BytesIO(data), []
    for i in range(max_pickles):
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    found.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # noqa: BLE001 - pickletools raises ValueError and others on garbage
            if i == 0:
                return None
            break
    return found


def _load_error(path: Path, exc: BaseException) -> ValueError:
    """Why ``torch.load(path, weights_only=True)`` failed, in the user's terms.

    A file that pickles Python objects other than tensors (which could run code
    when unpickled) is refused as unsafe, naming what it imports; a file that
    is not a readable torch checkpoint at all (random bytes, a truncated or
    foreign file) is reported as corrupt. Nothing in the file is run.
    """
    if isinstance(exc, OSError):
        return ValueError(f"Could not read {path}: {exc}")
    data = path.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                names = None if member is None else _pickle_globals(archive.read(member))
        except Exception:  # noqa: BLE001 - a damaged archive
            names = None
    else:
        names = _pickle_globals(data, max_pickles=4)
    unsafe = sorted({g for g in names or [] if not _safe_global(g)})
    if unsafe:
        return ValueError(
            f"Refused to load {path}: it holds Python objects other than tensors (it imports "
            f"{', '.join(unsafe[:5])}), which could run code when unpickled. xprune loads "
            f"weights only (safetensors, or a state dict saved with "
            f"torch.save(model.state_dict())); nothing in the file was run.")
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if names is None:
        return ValueError(f"Could not read {path}: {_NOT_TORCH}. Detail: {detail}")
    return ValueError(f"Could not read {path} as a weights-only PyTorch checkpoint: {detail}")


def save_model(model: nn.Module, path: str | Path, *,
               metadata: Mapping[str, str] | None = None) -> Path:
    """Save ``model``'s state dict as safetensors (atomically). Returns the path."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if any(k.endswith(("_orig", "_mask")) for k in state):
        state = _fold_pruning(state)
    payload = safetensors.torch.save(state, metadata=dict(metadata or {}))
    return atomic_write_bytes(path, payload)


def load_model(path: str | Path, template: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """Load weights into a fresh instance of the architecture.

    Parameters
    ----------
    path : path to a ``.safetensors`` (or weights-only ``.pt``) file.
    template : nn.Module or a callable returning one
        The architecture; a module is deep-copied, never modified.

    Raises
    ------
    ValueError
        If the checkpoint is refused (see :func:`load_state_dict`), its keys
        and shapes do not match the architecture (the message lists them), or a
        tensor holds NaN or Inf (the message names the file and the tensor).
    """
    import copy

    model = template() if callable(template) and not isinstance(template, nn.Module) \
        else copy.deepcopy(template)
    state = load_state_dict(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}")
        if wrong:
            details.append("shape mismatch " + ", ".join(
                f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                for k in wrong[:5]))
        raise ValueError(f"Checkpoint {path} does not fit {type(model).__name__}: "
                         + "; ".join(details) + ".")
    check_finite_weights(state, f"checkpoint {path}")
    model.load_state_dict(state)
    return model


def save_pair(pair: ModelPair, directory: str | Path, *,
              extra: Mapping[str, Any] | None = None) -> Path:
    """Save a pair to ``directory``: dense, sparse and masks as safetensors, plus ``manifest.json``.

    The manifest records the method, requested and measured sparsity, the
    method's parameters, the architecture's class name and package versions.
    """
    directory = Path(directory)
    save_model(pair.dense, directory / "dense.safetensors")
    save_model(pair.sparse, directory / "sparse.safetensors")
    masks = {k: v.to(torch.uint8).cpu().contiguous() for k, v in pair.masks.items()}
    atomic_write_bytes(directory / "masks.safetensors", safetensors.torch.save(masks))
    manifest = {
        "format": "xprune-pair/1", "method": pair.method, "amount": pair.amount,
        "measured_sparsity": pair.sparsity, "params": dict(pair.params),
        **({"layers": list(pair.layers)} if pair.layers else {}),
        "architecture": f"{type(pair.dense).__module__}.{type(pair.dense).__qualname__}",
        "versions": {"xprune": __version__, "torch": torch.__version__},
        **({"extra": dict(extra)} if extra else {}),
    }
    atomic_write_text(directory / "manifest.json",
                      json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return directory


def load_pair(directory: str | Path, template: nn.Module | Callable[[], nn.Module]) -> ModelPair:
    """Load a pair saved by :func:`save_pair` into fresh instances of ``template``.

    The sparse model's zeros are checked against the saved masks.

    Raises
    ------
    FileNotFoundError, ValueError
        On missing files, refused checkpoints, or a sparse model whose pruned
        weights are not zero.
    """
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"No manifest.json in {directory}: not a saved xprune pair.")
    manifest = json.loads(manifest_path.read_text())
    dense = load_model(directory / "dense.safetensors", template)
    sparse = load_model(directory / "sparse.safetensors", template)
    masks = {k: v.bool() for k, v in load_state_dict(directory / "masks.safetensors").items()}
    weights = dict(sparse.named_parameters())
    for key in masks:
        if key in weights and bool((weights[key].detach()[~masks[key]] != 0).any()):
            raise ValueError(f"Saved pair in {directory} is inconsistent: {key} has nonzero "
                             "weights where its mask is 0.")
    pair = ModelPair(dense=dense, sparse=sparse, method=manifest["method"],
                     amount=float(manifest["amount"]), masks=masks,
                     params=dict(manifest.get("params", {})),
                     layers=tuple(manifest.get("layers", ())))
    if abs(pair.sparsity - float(manifest["measured_sparsity"])) > 1e-9:
        raise ValueError(f"Saved pair in {directory} is inconsistent: the manifest says sparsity "
                         f"{manifest['measured_sparsity']}, the weights have {pair.sparsity}.")
    return pair


def save_attributions(attributions, path: str | Path) -> Path:
    """Write an :class:`~xprune.Attributions` record to a safetensors file, atomically.

    The maps, inputs, targets (and delta, predictions and the token feature
    mask where present) are stored as tensors; method, parameters and model
    tag as JSON metadata. Inputs given as a tuple or mapping of tensors are
    stored one tensor each (``inputs.<position or key>``) with their
    structure and ``attribute_to`` in the metadata, and come back as a tuple
    or a dict. Read it back with :func:`load_attributions` (no code is
    unpickled).

    Raises
    ------
    ValueError
        If ``attributions`` is not an Attributions record or its parameters
        are not JSON-serialisable.
    """
    if not isinstance(attributions, Attributions):
        raise ValueError(f"Expected an xprune.Attributions record, got "
                         f"{type(attributions).__name__}.")
    tensors = {"values": attributions.values, "targets": attributions.targets}
    inputs = attributions.inputs
    structure = None
    if isinstance(inputs, Tensor):
        tensors["inputs"] = inputs
    else:  # a tuple of positional or a mapping of keyword input tensors
        keys = list(range(len(inputs))) if isinstance(inputs, tuple) else list(inputs)
        structure = {"kind": "tuple" if isinstance(inputs, tuple) else "mapping", "keys": keys,
                     "attribute_to": attributions.attribute_to}
        for key in keys:
            tensors[f"inputs.{key}"] = inputs[key]
    for key in ("delta", "predictions", "feature_mask"):
        if getattr(attributions, key) is not None:
            tensors[key] = getattr(attributions, key)
    try:
        info = {"method": attributions.method, "params": dict(attributions.params),
                "model_tag": attributions.model_tag}
        if attributions.kind is not None:
            info["kind"] = attributions.kind
        if structure is not None:
            info["inputs"] = structure
        meta = json.dumps(info)
    except TypeError as exc:
        raise ValueError(f"Expected JSON-serialisable attribution parameters: {exc}") from None
    payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write_bytes(Path(path), safetensors.torch.save(
        payload, metadata={"xprune_attributions": meta}))


def load_attributions(path: str | Path):
    """Read an :class:`~xprune.Attributions` record written by :func:`save_attributions`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a safetensors file written by :func:`save_attributions`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Attribution file not found: {path}")
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            meta = (fh.metadata() or {}).get("xprune_attributions")
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"Could not read {path} as safetensors: {exc}") from None
    info = json.loads(meta) if meta is not None else {}
    structure = info.get("inputs")
    if structure is not None:
        names = [f"inputs.{key}" for key in structure["keys"]]
        if all(name in tensors for name in names):
            parts = [tensors[name] for name in names]
            tensors["inputs"] = (tuple(parts) if structure["kind"] == "tuple"
                                 else dict(zip(structure["keys"], parts, strict=True)))
    if meta is None or not {"values", "inputs", "targets"} <= tensors.keys():
        raise ValueError(f"Expected {path} to be an attribution file written by "
                         f"xprune.save_attributions (maps, inputs and targets), got tensors "
                         f"{sorted(tensors)}.")
    return Attributions(tensors["values"], tensors["inputs"], tensors["targets"], info["method"],
                        info.get("params", {}), info.get("model_tag"), tensors.get("delta"),
                        tensors.get("predictions"), tensors.get("feature_mask"),
                        None if structure is None else structure.get("attribute_to"),
                        info.get("kind"))


def _import_onnx2torch():
    """Import onnx2torch, which imports torchvision for two operators (NonMaxSuppression,
    RoiAlign) at import time. Where torchvision is absent (it is not a dependency of xprune),
    those two names are bound to stand-ins that raise, for the import only: nothing named
    torchvision stays in ``sys.modules``, so other packages' checks for it are unaffected."""
    import importlib.util
    import sys
    import types

    try:
        if importlib.util.find_spec("torchvision") is not None:
            import onnx2torch

            return onnx2torch
    except ImportError:
        pass
    if importlib.util.find_spec("onnx2torch") is None:
        raise ImportError("Loading ONNX models needs onnx2torch: pip install onnx "
                          "'onnx2torch==1.5.15' --no-deps (it lists torchvision, which xprune "
                          "does not need).")

    def missing(*args, **kwargs):
        raise NotImplementedError("this ONNX operator needs torchvision")

    stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    stub.ops = ops
    for name in ("roi_align", "nms", "box_convert"):
        setattr(ops, name, missing)
    sys.modules.update({"torchvision": stub, "torchvision.ops": ops})
    try:
        import onnx2torch
    finally:
        for name in ("torchvision", "torchvision.ops"):
            if sys.modules.get(name) in (stub, ops):
                del sys.modules[name]
    return onnx2torch


_NEEDS_TORCHVISION = ("NonMaxSuppression", "RoiAlign")


def _unsupported_operators(graph, registry) -> list[str]:
    """The operator types of ``graph`` (an ONNX ``ModelProto``) that onnx2torch cannot convert."""
    import importlib.util

    versions = {o.domain or "": o.version for o in graph.opset_import}
    bad = []
    for node in graph.graph.node:
        domain = node.domain or ""
        try:
            registry.get_converter(node.op_type, versions.get(domain, 1), domain)
        except NotImplementedError:
            bad.append(f"{domain + '.' if domain else ''}{node.op_type}")
            continue
        if node.op_type in _NEEDS_TORCHVISION and importlib.util.find_spec("torchvision") is None:
            bad.append(f"{node.op_type} (needs torchvision)")
    return list(dict.fromkeys(bad))


def load_onnx(path: str | Path) -> nn.Module:
    """A model exported to ONNX (from PyTorch, TensorFlow/Keras with tf2onnx, ...) as a
    PyTorch module, through onnx2torch.

    The result is a ``torch.fx.GraphModule`` whose Conv and Gemm nodes are
    ``nn.Conv2d`` and ``nn.Linear`` modules, so it is pruned, explained and
    studied like any other model. It is in eval mode; its weights are float32
    as stored. onnx2torch converts the operators of opsets 9 to 17 or so: export
    with ``opset_version=17`` (``torch.onnx.export(..., dynamo=False)`` writes
    graphs it converts).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a valid ONNX model, or holds an operator onnx2torch
        cannot convert (the message names every such operator and the opset),
        or has NaN/Inf weights.
    ImportError
        If onnx or onnx2torch is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        import onnx
    except ImportError:
        raise ImportError("Loading ONNX models needs onnx: pip install onnx") from None
    onnx2torch = _import_onnx2torch()
    from onnx2torch.node_converters import registry

    try:
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, ValidationError, ...
        raise ValueError(f"Could not read {path} as an ONNX model: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
                         ) from None
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in graph.opset_import)
    bad = _unsupported_operators(graph, registry)
    if bad:
        raise ValueError(f"Cannot convert {path} to PyTorch: onnx2torch has no converter for "
                         f"the operator(s) {', '.join(bad)} (opset {opsets}). Export with "
                         "opset_version=17 and standard operators, or replace them in the "
                         "model.")
    try:
        model = onnx2torch.convert(graph)
    except Exception as exc:  # noqa: BLE001 - a converter refused one node's attributes
        node = _failing_node(exc)
        where = f" at operator {node.operation_type} (node {node.name!r})" if node else ""
        raise ValueError(f"Cannot convert {path} to PyTorch{where} (opset {opsets}): "
                         f"{type(exc).__name__}: {exc}") from None
    check_finite_weights(model.state_dict(), f"the ONNX model {path}")
    return model.float().eval()


def _failing_node(exc: BaseException):
    """The onnx2torch node being converted when ``exc`` was raised (from the traceback)."""
    tb, node = exc.__traceback__, None
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("onnx_node")
        if candidate is not None and hasattr(candidate, "operation_type"):
            node = candidate
        tb = tb.tb_next
    return node
