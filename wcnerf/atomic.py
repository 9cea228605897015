"""Atomic file writes: a killed run never leaves half a checkpoint, mesh, table or plot.

One mechanism for every writer of the package (torch.save, np.savez, trimesh export,
matplotlib/imageio PNGs, JSON, text): write to a temporary file, flush it to disk, rename it
over the target. Standard library only, so every sub-package may use it.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

__all__ = ["atomic_path", "write_json", "write_text"]


@contextmanager
def atomic_path(path: Path, *, tmp_dir: Optional[Path] = None) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on success it is fsynced and
    renamed over ``path`` (and the rename made durable), on failure it is removed.

    The temporary name keeps ``path``'s suffix, because numpy, trimesh, matplotlib and imageio
    pick the format from it. ``tmp_dir`` (default: ``path``'s folder, same file system) puts
    it elsewhere, e.g. outside a folder whose file names another program parses. Created with
    ``open``, so it gets the umask's permissions (``mkstemp`` would give 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tmp_dir) if tmp_dir is not None else path.parent
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}"
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf8")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (non-JSON values as ``str``) to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")
