"""AlexNet's ImageNet weights for LPIPS, fetched once into torch's hub cache, as torchvision does.

torchmetrics' LPIPS (``net_type="alex"``) builds torchvision's AlexNet with its ImageNet weights,
which torchvision downloads into ``torch.hub.get_dir()/checkpoints/`` with no timeout (an
offline machine waits on the network) and no way to say no. Here the same file is fetched the
same way, but

- with a timeout (:data:`TIMEOUT_S` to connect, and for each read),
- atomically (a temporary file beside the target, renamed into place: a killed download leaves
  no half file where torchvision looks),
- verified: torchvision's file names carry the first hex digits of the file's SHA-256
  (``alexnet-owt-7be5be79.pth``); a file that does not match is refused and removed,
- at most once per process: a failed attempt is remembered and not repeated,
- never when ``$WCNERF_NO_DOWNLOAD`` is set (``1``): for machines that must not reach out.

``$WCNERF_LPIPS_URL`` replaces the address (a mirror; the tests use a server on 127.0.0.1); its
file name must carry the hash prefix in torchvision's form (``<name>-<sha256 prefix>.<ext>``).
Standard library only (plus torch for the hub folder).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, Optional, Tuple

__all__ = [
    "ALEXNET_URL",
    "DownloadError",
    "NO_DOWNLOAD_ENV",
    "TIMEOUT_S",
    "URL_ENV",
    "cache_path",
    "download",
    "downloads_allowed",
    "fetch_alexnet_weights",
    "hash_prefix",
    "weights_url",
]

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
"""torchvision's ``AlexNet_Weights.IMAGENET1K_V1.url``: the file torchmetrics' LPIPS (alex) reads."""

URL_ENV = "WCNERF_LPIPS_URL"
"""Environment variable replacing :data:`ALEXNET_URL` (a mirror, or a local server in the tests)."""

NO_DOWNLOAD_ENV = "WCNERF_NO_DOWNLOAD"
"""Environment variable: set (``1``) and nothing is ever downloaded."""

TIMEOUT_S = 5.0
"""Seconds allowed to resolve the host, to connect, and for each read of the download."""

_HASH = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's HASH_REGEX
_FAILED: Dict[str, str] = {}  # url -> why: one attempt per process


class DownloadError(RuntimeError):
    """A download that did not produce a verified file: the message names the URL and why."""


def weights_url() -> str:
    """The address AlexNet's weights are fetched from: ``$WCNERF_LPIPS_URL`` or :data:`ALEXNET_URL`."""
    return os.environ.get(URL_ENV, "").strip() or ALEXNET_URL


def cache_path(url: Optional[str] = None) -> Path:
    """Where the file of ``url`` goes: ``torch.hub.get_dir()/checkpoints/<file name>``, where
    torchvision looks for it."""
    import torch

    name = Path(urllib.parse.urlparse(url or weights_url()).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def hash_prefix(name: str) -> Optional[str]:
    """The SHA-256 prefix in a torchvision file name (``alexnet-owt-7be5be79.pth`` -> ``7be5be79``)."""
    m = _HASH.search(name)
    return m.group(1) if m else None


def downloads_allowed() -> bool:
    """False when ``$WCNERF_NO_DOWNLOAD`` is set to anything but ``0`` / ``false`` / ``no``."""
    return os.environ.get(NO_DOWNLOAD_ENV, "").strip().lower() in ("", "0", "false", "no")


def _resolve(url: str, host: str, port: int, timeout: float) -> None:
    """Name resolution within ``timeout`` (getaddrinfo has no timeout of its own; a machine
    without a reachable DNS server can block in it for half a minute)."""
    done: list = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, port)
            done.append(None)
        except OSError as exc:
            done.append(exc)

    t = threading.Thread(target=lookup, daemon=True)
    t.start()
    t.join(timeout)
    if not done:
        raise DownloadError(f"{url}: {host} not resolved within {timeout:g} s")
    if done[0] is not None:
        raise DownloadError(f"{url}: {host} not resolved ({done[0]})")


def _uses_proxy(url: str) -> bool:
    parts = urllib.parse.urlparse(url)
    return parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname or "")


def download(url: str, dest: Path, timeout: Optional[float] = None) -> Path:
    """Fetch ``url`` to ``dest`` atomically, checking the SHA-256 prefix its file name carries.

    Raises :class:`DownloadError` (network, HTTP status, hash) naming the URL, or
    :class:`wcnerf.atomic.WriteError` when ``dest`` cannot be written; ``dest`` is then
    untouched and no temporary file is left."""
    from wcnerf.atomic import atomic_path

    timeout = TIMEOUT_S if timeout is None else float(timeout)
    dest = Path(dest)
    want = hash_prefix(Path(urllib.parse.urlparse(url).path).name)
    if not want:
        raise DownloadError(f"{url}: the file name carries no SHA-256 prefix (<name>-<hex>.<ext>) to check the download against")
    parts = urllib.parse.urlparse(url)
    if parts.scheme not in ("http", "https"):
        raise DownloadError(f"{url}: only http:// and https:// addresses are fetched")
    try:
        if parts.hostname and not _uses_proxy(url):
            _resolve(url, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), timeout)
        response = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "wcnerf"}), timeout=timeout)
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, HTTPError, timeouts, refusals
        raise DownloadError(f"{url}: {_cause(exc)}") from None
    sha, received = hashlib.sha256(), 0
    announced = response.headers.get("Content-Length")
    with response, atomic_path(dest) as tmp, open(tmp, "wb") as out:
        while True:
            try:
                chunk = response.read(1 << 20)
            except (OSError, http.client.HTTPException) as exc:  # a read timeout, a cut transfer: not a write failure
                raise DownloadError(f"{url}: {_cause(exc)}") from None
            if not chunk:
                break
            sha.update(chunk)
            received += len(chunk)
            out.write(chunk)
        out.flush()
        if announced and announced.isdigit() and received != int(announced):
            raise DownloadError(f"{url}: the transfer stopped after {received} of {announced} bytes")
        got = sha.hexdigest()
        if not got.startswith(want):
            raise DownloadError(f"{url}: SHA-256 {got[:len(want)]}... does not match the {want} in its file name; file refused")
    return dest


def _cause(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no answer (timed out)"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the transfer stopped after {len(exc.partial)} bytes"
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


def fetch_alexnet_weights(timeout: Optional[float] = None) -> Tuple[Optional[Path], str]:
    """``(path, how)`` of AlexNet's weights in the torch hub cache, downloading them there once
    if allowed; ``(None, why)`` when they are not there and could not or may not be fetched."""
    url = weights_url()
    path = cache_path(url)
    if path.is_file():
        return path, "torch hub cache"
    if not downloads_allowed():
        return None, f"${NO_DOWNLOAD_ENV} is set, so {path.name} was not downloaded"
    if url in _FAILED:
        return None, _FAILED[url]
    try:
        download(url, path, timeout)
    except (DownloadError, OSError) as exc:
        _FAILED[url] = f"{path.name} could not be downloaded ({exc})"
        return None, _FAILED[url]
    return path, f"downloaded from {url}"
