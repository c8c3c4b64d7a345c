"""A run's store of finished work, so that a killed run resumes without recomputing it.

Everything lives under ``<run>/.cache/<fingerprint>/``, where the fingerprint
hashes the parts of the config that determine the numbers and a digest of
xprune's source code; a changed config or a changed implementation starts a
fresh store, so results of old code are never reused. Models are safetensors files (loading them cannot
execute code), tables are CSV files with exact float round-trip, and every
file is written atomically, so a file that exists is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import safetensors.torch
from torch import Tensor, nn

from ._io import atomic_write_bytes, atomic_write_text, read_table

__all__ = ["RunCache", "code_digest", "fingerprint"]


def fingerprint(data: dict[str, Any]) -> str:
    """Short, stable hash of JSON-serialisable ``data``."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def code_digest() -> str:
    """SHA-256 (16 hex digits) of every ``.py`` file of the installed xprune package."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


class RunCache:
    """Keyed results of a run; ``None`` directory disables caching.

    The store's folder is named by ``key_data`` and :func:`code_digest`.
    """

    def __init__(self, root: Path | None, key_data: dict[str, Any]) -> None:
        self.dir = None if root is None else Path(root) / ".cache" / fingerprint(
            {"config": key_data, "code": code_digest()})

    def _path(self, key: str, suffix: str) -> Path | None:
        return None if self.dir is None else self.dir / f"{_safe(key)}{suffix}"

    def has(self, key: str) -> bool:
        """Whether a model or tensor dict is stored under ``key``."""
        path = self._path(key, ".safetensors")
        return path is not None and path.exists()

    def tensors(self, key: str, compute: Callable[[], dict[str, Tensor]],
                meta: Callable[[], dict[str, str]] | None = None
                ) -> tuple[dict[str, Tensor], dict[str, str]]:
        """Load the tensor dict stored under ``key``, or compute and store it."""
        path = self._path(key, ".safetensors")
        if path is not None and path.exists():
            with safetensors.safe_open(str(path), framework="pt") as fh:
                return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
        tensors = compute()
        metadata = meta() if meta else {}
        if path is not None:
            payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            atomic_write_bytes(path, safetensors.torch.save(payload, metadata=metadata))
        return tensors, metadata

    def model(self, key: str, template: Callable[[dict[str, Any]], nn.Module],
              compute: Callable[[], tuple[nn.Module, dict[str, Any]]]) -> tuple[nn.Module, dict]:
        """A trained model and JSON info about it; if stored, loaded into ``template(info)``.

        ``template`` receives the stored info, so that an architecture that
        depends on it (a structurally pruned model) can be rebuilt first.
        """
        holder: dict[str, Any] = {}

        def run():
            model, info = compute()
            holder["model"], holder["info"] = model, info
            return model.state_dict()

        state, meta = self.tensors(key, run, lambda: {"info": json.dumps(holder["info"])})
        if "model" in holder:
            return holder["model"], holder["info"]
        info = json.loads(meta.get("info", "{}"))
        model = template(info)
        model.load_state_dict(state)
        return model, info

    def frame(self, key: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """Load the table stored under ``key``, or compute and store it."""
        frame = self.load_frame(key)
        if frame is None:
            frame = compute()
            self.store_frame(key, frame)
        return frame

    def load_frame(self, key: str) -> pd.DataFrame | None:
        """The table stored under ``key``, or None."""
        path = self._path(key, ".csv")
        return read_table(path) if path is not None and path.exists() else None

    def store_frame(self, key: str, frame: pd.DataFrame) -> None:
        """Store ``frame`` under ``key`` atomically (nothing without a directory)."""
        path = self._path(key, ".csv")
        if path is not None:
            buf = io.StringIO()
            frame.to_csv(buf, index=False, na_rep="NaN")
            atomic_write_text(path, buf.getvalue())
