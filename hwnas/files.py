"""Writing files so that nothing is ever half-written.

Every output a user may read while it is being produced, or after a crash (tables,
checkpoints, predictors, manifests, run folders), goes through :func:`atomic_write`: the
content is written to a temporary file beside the target, flushed to disk, then renamed
over the target in one step, so a reader sees the old file or the new one, never a part.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to produce the content in a temporary file, then move it to
    ``path`` atomically; a failure leaves ``path`` as it was and no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def json_default(v: Any) -> Any:
    """JSON for numpy scalars (``json.dumps(..., default=json_default)``); other objects
    are written as their string."""
    import numpy as np

    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def atomic_write_json(path: str | Path, obj: Any, **dump: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, **dump) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_tensors(path: str | Path, error: type[Exception], what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` of a file from elsewhere, every failure turned
    into ``error`` naming the file and the reason in one line. A file holding Python
    objects beyond tensors (a pickle that could run code) is refused as such; torch's
    advice to load it with ``weights_only=False`` is never passed on."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise error(f"{path}: holds Python objects beyond tensors and plain containers; "
                    f"hwnas loads weights only, never code") from None
    except Exception as exc:  # truncated zip, not a torch file, ...
        reason = " ".join(str(exc).split())
        reason = reason.split(". ")[0][:160] if reason else type(exc).__name__
        raise error(f"{path}: not a readable {what} ({reason})") from None


__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_json", "atomic_write_text",
           "json_default", "load_tensors"]


def user_cache(*parts: str) -> Path:
    """A folder of the per-user cache shared by runs (``$HWNAS_CACHE``, else
    ``$XDG_CACHE_HOME/hwnas``, else ``~/.cache/hwnas``): converted models that cost seconds
    each to make and depend only on what their key says."""
    root = os.environ.get("HWNAS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME")
                                                 or Path.home() / ".cache") / "hwnas"
    folder = Path(root, *parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
