"""Atomic file writes: a reader sees the previous complete file or the new one, never half."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "read_table", "read_toml"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path``.

    The temporary file lives in the destination directory so that the final
    ``os.replace`` is a same-filesystem rename, which POSIX makes atomic.

    Raises
    ------
    OSError
        Of the same kind (``PermissionError`` for a read-only folder), naming the
        folder and the file, if the folder cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the folder, not the temporary file (a read-only run folder)
        raise type(exc)(f"Cannot write {path.name} in the folder {path.parent}: "
                        f"{exc.strerror or exc}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV that xprune wrote, floats exactly as written, "NaN" as the only missing value."""
    kwargs = {}
    if int(pd.__version__.split(".")[0]) < 3:  # pandas 3 round-trips floats by default
        kwargs["float_precision"] = "round_trip"
    return pd.read_csv(path, keep_default_na=False, na_values=["NaN"], **kwargs)


def read_toml(path: str | os.PathLike) -> dict:
    """The tables of the TOML file at ``path``.

    Raises
    ------
    ValueError
        If ``path`` is a directory or not valid TOML (the parser's message).
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"Expected a TOML config file, got the directory {path}.")
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"Could not parse {path} as TOML: {exc}") from None
