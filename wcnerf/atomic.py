"""Atomic file writes: a killed run never leaves half a checkpoint, mesh, table or plot.

One mechanism for every writer of the package (torch.save, np.savez, trimesh export,
matplotlib/imageio PNGs, JSON, text): write to a temporary file, flush it to disk, rename it
over the target. Standard library only, so every sub-package may use it.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

__all__ = ["WriteError", "atomic_path", "ensure_writable_dir", "remove_stale_temporaries", "write_json", "write_text"]


class WriteError(OSError):
    """An output that could not be written: ``"<target>: cannot write (<cause>)"``, with the free
    space when the disk is full. The target keeps its previous content (nothing half-written)."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]" prefix
        return str(self.strerror)


def _torch_write_failure(exc: BaseException) -> bool:
    """torch.save reports a failed write (e.g. a full disk) as a RuntimeError of its zip writer."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("unexpected pos" in text or "PytorchStreamWriter" in text
                                              or "file write failed" in text)


def write_error(path: Path, exc: BaseException, where: Optional[Path] = None) -> WriteError:
    """A :class:`WriteError` for ``path`` from the OSError (or torch write failure) ``exc``."""
    import errno
    import shutil

    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
    code = exc.errno if isinstance(exc, OSError) else None
    try:
        free = shutil.disk_usage(where or Path(path).parent).free
    except OSError:
        free = None
    if code == errno.ENOSPC or (code is None and free is not None and free < 16 * 2**20):
        cause = f"no space left on the device: {free / 2**20:.1f} MB free" if free is not None else "no space left on the device"
    elif code is None:
        cause = f"the write failed: {cause}"
    return WriteError(code or errno.EIO, f"{path}: cannot write ({cause}); its previous version, if any, is kept")


@contextmanager
def atomic_path(path: Path, *, tmp_dir: Optional[Path] = None) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on success it is fsynced and
    renamed over ``path`` (and the rename made durable), on failure it is removed.

    The temporary name keeps ``path``'s suffix, because numpy, trimesh, matplotlib and imageio
    pick the format from it. ``tmp_dir`` (default: ``path``'s folder, same file system) puts
    it elsewhere, e.g. outside a folder whose file names another program parses. Created with
    ``open``, so it gets the umask's permissions (``mkstemp`` would give 0600). A failed write
    (an OSError, or torch's zip writer failing on a full disk) is raised as :class:`WriteError`
    naming ``path`` and the cause.
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
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, WriteError) or not (isinstance(exc, OSError) or _torch_write_failure(exc)):
            raise
        raise write_error(path, exc, tmp_dir) from exc
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def remove_stale_temporaries(folder: Path) -> list:
    """Delete the temporary files :func:`atomic_path` left in ``folder`` when its process was
    killed (SIGKILL, power loss) in the middle of a write: those whose process is gone. Returns
    the removed paths. A live process's temporary (another writer) is left alone."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TMP_NAME.match(p.name)
        if not m or not p.is_file():
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid():
            continue  # this process's own: in use
        try:
            os.kill(pid, 0)
            continue  # alive: another writer's write in progress
        except ProcessLookupError:
            pass  # gone: its temporary is debris
        except OSError:
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def ensure_writable_dir(folder: Path, flag: str = "--output-dir", what: str = "folder") -> None:
    """Create ``folder`` and write (then remove) a probe file in it, or raise :class:`WriteError`
    naming the folder and the cause (a path under a regular file, a read-only file system,
    permissions, a full disk): called at start-up, before any work, where it can be known.
    ``what`` names the folder in the message and ``flag`` the option that chooses another."""
    import errno

    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise WriteError(errno.ENOTDIR, f"{existing}: is a file, so the {what} {folder} cannot be made under it; "
                                        f"choose another {flag}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(probe, "wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        raise WriteError(exc.errno or errno.EIO, f"{folder}: cannot write the {what} ({exc.strerror or exc}); choose "
                                                 f"another {flag}") from None


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf8")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (non-JSON values as ``str``) to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")
