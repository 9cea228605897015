"""A lease on a run folder: at most one process writes a run at a time, across processes and
hosts sharing a file system.

A lease is the file ``<folder>/lease.json`` holding who holds the folder (host, pid, job id),
since when (``started``) and when it was last renewed (``renewed``, seconds since the epoch).
It is created atomically and exclusively: the holder's record is written to a private file
and hard-linked to ``lease.json`` (``link`` fails when the name exists; atomic on local file
systems and on NFS), so nobody ever reads half a lease. While it is held, a heartbeat thread
renews it every ``stale_after / 4`` seconds. A lease not renewed for ``stale_after`` seconds is
*stale* (its holder died, hung or lost its host) and may be taken over; a lease held by a
process that no longer exists on this host is stale at once. A live lease is never taken over.

Every change of ``lease.json`` (create, renew, take over, release) is made while holding a
short POSIX lock (``lockf``) on ``<folder>/.lease.lock``, and a take-over re-reads the lease
under that lock before replacing it: two processes that both see the same stale lease cannot
both take it, and a holder renewing at the last moment keeps it. The POSIX lock is released by
the kernel when its process dies, so it never goes stale itself; it works across hosts on NFS
v3/v4 (with lockd) and the cluster file systems that support ``fcntl`` locks.

A released lease leaves nothing in the folder: the release removes ``lease.json`` and then
``.lease.lock``, both while holding that lock. A process that opened the lock file before it
was removed and was waiting on it gets the lock of a file no longer in the folder; so whoever
takes the lock checks afterwards that the folder's ``.lease.lock`` is still the file it locked
(same inode) and otherwise starts again on the folder's current one. Only a holder of the lock
removes the file, so at most one process at a time holds the lock of the folder's file.

A holder whose lease was taken over meanwhile (it stalled for longer than ``stale_after``)
learns it at its next renewal: :attr:`Lease.lost` is set and ``on_lost`` is called.

Standard library only; used by the comparison harness's workers (:mod:`wcnerf.eval.workers`)
and by the shape trainer (:func:`wcnerf.shape.train.fit`).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

__all__ = ["LEASE_FILE", "DEFAULT_STALE_AFTER", "Lease", "LeaseHeld", "read_lease", "lease_is_live", "pid_alive", "describe_holder", "default_job_id"]

LEASE_FILE = "lease.json"
LOCK_FILE = ".lease.lock"
DEFAULT_STALE_AFTER = 120.0
"""Seconds without renewal after which a lease is stale (override per lease or with
``$WCNERF_LEASE_SECONDS``)."""


def default_stale_after() -> float:
    try:
        return float(os.environ.get("WCNERF_LEASE_SECONDS", DEFAULT_STALE_AFTER))
    except ValueError:
        return DEFAULT_STALE_AFTER


def default_job_id() -> Optional[str]:
    """The scheduler's id of this job: SLURM's (``<array job>_<task>`` for an array task), else
    ``$WCNERF_JOB_ID``, else None."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm:{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm:{env['SLURM_JOB_ID']}"
    return env.get("WCNERF_JOB_ID") or None


class LeaseHeld(RuntimeError):
    """The folder is leased by another live process; ``holder`` is its lease record."""

    def __init__(self, folder: Path, holder: Dict[str, Any]):
        self.folder = Path(folder)
        self.holder = dict(holder or {})
        super().__init__(f"{self.folder} is in use by {describe_holder(self.holder)}")


def describe_holder(holder: Optional[Dict[str, Any]]) -> str:
    """``host H, pid P (job J), since ..., renewed Ns ago`` for messages."""
    if not holder:
        return "an unknown process"
    parts = [f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}"]
    if holder.get("job_id"):
        parts.append(f"job {holder['job_id']}")
    if holder.get("started"):
        parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["started"]))))
    if holder.get("renewed"):
        parts.append(f"renewed {max(0.0, time.time() - float(holder['renewed'])):.0f}s ago")
    return ", ".join(parts)


def read_lease(folder: Path) -> Optional[Dict[str, Any]]:
    """The lease record of ``folder`` (with ``mtime``, the file's modification time), or None."""
    path = Path(folder) / LEASE_FILE
    try:
        with open(path, encoding="utf8") as fh:
            st = os.fstat(fh.fileno())
            data = json.loads(fh.read() or "{}")
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        data = {}
    data["mtime"] = st.st_mtime
    return data


def pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` (int or text) exists on this host; anything unparsable is not alive."""
    try:
        pid = int(pid)
        if pid <= 0:
            return False
        os.kill(pid, 0)
        return True
    except (ValueError, TypeError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    except OSError:
        return False


def lease_is_live(record: Optional[Dict[str, Any]], stale_after: Optional[float] = None, now: Optional[float] = None) -> bool:
    """Whether a lease record is held: renewed (by its own clock and by the file's mtime, the
    later of both) within its ``stale_after`` seconds (or the one given), and, when it was taken
    on this host, its process still exists."""
    if not record:
        return False
    now = time.time() if now is None else now
    limit = float(stale_after if stale_after is not None else record.get("stale_after") or default_stale_after())
    try:
        renewed = max(float(record.get("renewed") or 0.0), float(record.get("mtime") or 0.0))
    except (TypeError, ValueError):
        renewed = float(record.get("mtime") or 0.0)
    if now - renewed > limit:
        return False
    if record.get("host") == socket.gethostname() and not pid_alive(record.get("pid")):
        return False  # its process is gone: no need to wait for the lease to expire
    return True


_THREAD_LOCK = threading.Lock()  # POSIX locks belong to a process: threads need their own


class _HeldLock:
    """The folder's lock while held; :meth:`remove` deletes its file before it is unlocked."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def remove(self) -> None:
        """Remove ``.lease.lock`` (a released lease leaves no file): safe while held, since a
        waiter on the removed file notices it is gone and locks the folder's next one."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (it was not removed or replaced)."""
    try:
        st, mine = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[_HeldLock]:
    """The short POSIX lock that serialises changes of the folder's lease file (and a process
    lock for the threads of this process). Locks the file the folder holds *after* the lock is
    granted: one removed meanwhile by a releasing holder is let go and the new one locked."""
    import fcntl

    path = Path(folder) / LOCK_FILE
    with _THREAD_LOCK:
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                if _is_current(fd, path):
                    break
                fcntl.lockf(fd, fcntl.LOCK_UN)  # the file was removed while we waited for it
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            yield _HeldLock(path)
        finally:
            try:
                fcntl.lockf(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


class Lease:
    """A lease on ``folder`` (see the module doc). Use as a context manager or with
    :meth:`acquire` / :meth:`release`::

        with Lease(run_dir, job_id="ray:3"):        # raises LeaseHeld when another process holds it
            train(run_dir)

    ``stale_after``: seconds without renewal after which the lease may be taken over
    (default ``$WCNERF_LEASE_SECONDS`` or 120); ``heartbeat``: seconds between renewals
    (default a quarter of ``stale_after``); ``on_lost``: called (from the heartbeat thread)
    if the lease was taken over while held.
    """

    def __init__(
        self,
        folder: Path,
        *,
        stale_after: Optional[float] = None,
        heartbeat: Optional[float] = None,
        job_id: Optional[str] = None,
        info: Optional[Dict[str, Any]] = None,
        on_lost: Optional[Callable[["Lease"], None]] = None,
    ):
        self.folder = Path(folder)
        self.stale_after = float(stale_after if stale_after is not None else default_stale_after())
        self.heartbeat = float(heartbeat if heartbeat is not None else max(0.05, self.stale_after / 4))
        self.job_id = job_id if job_id is not None else default_job_id()
        self.info = dict(info or {})
        self.on_lost = on_lost
        self.token: Optional[str] = None
        self.took_over: Optional[Dict[str, Any]] = None
        """The stale lease this one replaced (None when the folder was free)."""
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ state
    @property
    def path(self) -> Path:
        return self.folder / LEASE_FILE

    @property
    def held(self) -> bool:
        return self.token is not None and not self.lost.is_set()

    def holder(self) -> Optional[Dict[str, Any]]:
        """The current lease record of the folder (anyone's), or None."""
        return read_lease(self.folder)

    def _record(self, token: str, started: float) -> Dict[str, Any]:
        return {
            **self.info,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job_id": self.job_id,
            "started": started,
            "renewed": time.time(),
            "stale_after": self.stale_after,
            "token": token,
        }

    def _write_private(self, record: Dict[str, Any]) -> Path:
        tmp = self.folder / f".lease.{record['token']}.{uuid.uuid4().hex[:6]}.tmp"
        with open(tmp, "w", encoding="utf8") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    # ------------------------------------------------------------------ acquire / release
    def try_acquire(self) -> bool:
        """Take the lease if the folder is free or its lease is stale; False if a live lease is
        held by someone else. Starts the heartbeat on success."""
        if self.held:
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        record = self._record(token, time.time())
        tmp = self._write_private(record)
        try:
            with _folder_lock(self.folder):
                try:
                    os.link(tmp, self.path)  # atomic exclusive create, complete content
                    self.took_over = None
                except FileExistsError:
                    current = read_lease(self.folder)
                    if current is not None and lease_is_live(current):
                        return False
                    if current is None and self.path.exists():
                        # unreadable (e.g. emptied by a crashed file system): judge by its age
                        try:
                            if time.time() - self.path.stat().st_mtime <= self.stale_after:
                                return False
                        except FileNotFoundError:
                            pass
                    os.replace(tmp, self.path)  # under the lock: nobody renewed or took it meanwhile
                    self.took_over = current
                except OSError as exc:  # a file system without hard links: exclusive create
                    if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                        raise
                    return self._acquire_without_links(tmp)
        finally:
            tmp.unlink(missing_ok=True)
        self._started(token)
        return True

    def _acquire_without_links(self, tmp: Path) -> bool:  # pragma: no cover - FAT-like file systems
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            os.close(fd)
        except FileExistsError:
            current = read_lease(self.folder)
            if current is not None and current.get("token") and lease_is_live(current):
                return False
            self.took_over = current
        os.replace(tmp, self.path)
        self._started(json.loads(self.path.read_text())["token"])
        return True

    def _started(self, token: str) -> None:
        self.token = token
        self.lost.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-heartbeat:{self.folder.name}", daemon=True)
        self._thread.start()

    def acquire(self, wait: bool = False, timeout: Optional[float] = None, poll: Optional[float] = None) -> "Lease":
        """Take the lease; when another live process holds it, raise :class:`LeaseHeld`
        (``wait=False``) or wait until it is released or stale (at most ``timeout`` seconds,
        then :class:`LeaseHeld`)."""
        poll = poll if poll is not None else min(5.0, max(0.05, self.heartbeat))
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.try_acquire():
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                raise LeaseHeld(self.folder, self.holder() or {})
            time.sleep(poll)
        return self

    def renew(self) -> bool:
        """Renew now; False (and :attr:`lost` set) if the lease is no longer ours."""
        if self.token is None:
            return False
        with _folder_lock(self.folder):
            current = read_lease(self.folder)
            if current is None or current.get("token") != self.token:
                lost = True
            else:
                lost = False
                record = {k: v for k, v in current.items() if k != "mtime"}
                record["renewed"] = time.time()
                tmp = self._write_private(record)
                try:
                    os.replace(tmp, self.path)
                finally:
                    tmp.unlink(missing_ok=True)
        if lost and not self.lost.is_set():
            self.lost.set()
            if self.on_lost is not None:
                self.on_lost(self)
        return not lost

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                if not self.renew():
                    return
            except OSError:
                continue  # a file-system hiccup: try again at the next beat

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file if it is still ours, and the lock file
        when no lease is left (a finished run's folder holds neither)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(1.0, self.heartbeat * 2))
        self._thread = None
        token, self.token = self.token, None
        if token is None:
            return
        try:
            with _folder_lock(self.folder) as lock:
                current = read_lease(self.folder)
                if current is not None and current.get("token") == token:
                    self.path.unlink(missing_ok=True)
                if not self.path.exists():  # nobody else holds the folder: leave no lock file
                    lock.remove()
        except OSError:
            pass

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lease({str(self.folder)!r}, held={self.held})"
