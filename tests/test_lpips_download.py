"""LPIPS as nerfstudio users get it (issue 31, point 2): AlexNet's weights fetched once into
torch's hub cache, with a timeout, atomically, hash-checked; offline one warning, and only where
a metric is computed; ``$WCNERF_NO_DOWNLOAD`` never reaches out.

Every download goes to a server on 127.0.0.1 in a thread of this process (``$WCNERF_LPIPS_URL``),
serving a small stand-in for AlexNet's weights (the real first conv layer's shape with random
values, every other tensor a broadcast zero: about 100 kB) under a torchvision-style name that
carries its own SHA-256 prefix. The real weights are never needed.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from wcnerf import lpips_weights as lw

pytest.importorskip("torchmetrics")
torchvision = pytest.importorskip("torchvision")


# ----------------------------------------------------------------------------- servers
class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass


class FileServer:
    """http.server over ``folder`` on 127.0.0.1; ``gets`` counts the requests per path."""

    def __init__(self, folder: Path) -> None:
        gets: dict = {}

        class Handler(_Files):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(folder), **k)

            def do_GET(self):
                gets[self.path] = gets.get(self.path, 0) + 1
                super().do_GET()

        self.gets = gets
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers; ``accepted`` counts them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.accepted = 0
        self.conns: list = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/{name}"

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache, no weights named, downloads allowed, no failure remembered."""
    from wcnerf.plugin import compat

    monkeypatch.delenv(compat.LPIPS_ENV, raising=False)
    monkeypatch.delenv(lw.NO_DOWNLOAD_ENV, raising=False)
    monkeypatch.delenv(lw.URL_ENV, raising=False)
    monkeypatch.setattr(lw, "_FAILED", {})
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 directly
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(old)


@pytest.fixture
def weights(tmp_path):
    """``(folder, file name, first conv weight)`` of the small stand-in for AlexNet's weights."""
    sd = torchvision.models.alexnet(weights=None).state_dict()
    small = {k: v if k == "features.0.weight" else torch.zeros(1, dtype=v.dtype).expand(v.shape) for k, v in sd.items()}
    folder = tmp_path / "served"
    folder.mkdir()
    tmp = folder / "alexnet.tmp"
    torch.save(small, tmp)
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    name = f"alexnet-small-{sha[:8]}.pth"
    tmp.rename(folder / name)
    (folder / f"alexnet-bad-{'0' * 8}.pth").write_bytes((folder / name).read_bytes())  # wrong prefix
    return folder, name, sd["features.0.weight"]


@pytest.fixture
def server(weights):
    s = FileServer(weights[0])
    yield s
    s.close()


@pytest.fixture
def silent():
    s = SilentServer()
    yield s
    s.close()


def _warnings(text: str) -> int:
    return text.count("LPIPS omitted")


# ----------------------------------------------------------------------------- tests
def test_the_default_address_is_torchvisions_and_the_file_lands_where_torchvision_looks(hub):
    from wcnerf.plugin.compat import ALEXNET_WEIGHTS_FILE

    assert lw.ALEXNET_URL == torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
    assert lw.cache_path() == Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS_FILE == hub / ALEXNET_WEIGHTS_FILE
    assert lw.hash_prefix(ALEXNET_WEIGHTS_FILE) == "7be5be79"


def test_downloaded_once_into_the_hub_cache_and_lpips_is_built_from_it(hub, server, weights, monkeypatch):
    from wcnerf.plugin import compat

    folder, name, first_conv = weights
    monkeypatch.setenv(lw.URL_ENV, server.url(name))
    metric, why = compat.build_lpips()
    assert metric is not None, why
    assert (hub / name).read_bytes() == (folder / name).read_bytes()
    assert sorted(p.name for p in hub.iterdir()) == [name]  # no temporary file left
    torch.testing.assert_close(metric.net.net.slice1[0].weight, first_conv)
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert torch.isfinite(metric(a, b))

    again, why = compat.build_lpips()
    assert again is not None, why
    assert server.gets == {f"/{name}": 1}  # the second build read the cache


def test_a_file_whose_hash_does_not_match_its_name_is_refused_and_leaves_no_file(hub, server, monkeypatch):
    bad = f"alexnet-bad-{'0' * 8}.pth"
    monkeypatch.setenv(lw.URL_ENV, server.url(bad))
    path, why = lw.fetch_alexnet_weights()
    assert path is None and "does not match" in why and bad in why, why
    assert not hub.exists() or list(hub.iterdir()) == []
    assert server.gets == {f"/{bad}": 1}


def test_a_transfer_cut_short_leaves_no_file(hub, monkeypatch):
    """The server promises 100 kB, sends 1 kB and hangs up: nothing where torchvision looks."""
    sock = socket.create_server(("127.0.0.1", 0))

    def serve_one() -> None:
        conn, _ = sock.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        conn.close()

    threading.Thread(target=serve_one, daemon=True).start()
    try:
        monkeypatch.setenv(lw.URL_ENV, f"http://127.0.0.1:{sock.getsockname()[1]}/alexnet-owt-7be5be79.pth")
        path, why = lw.fetch_alexnet_weights()
    finally:
        sock.close()
    assert path is None and "stopped after 1000 of 100000 bytes" in why, why
    assert not hub.exists() or list(hub.iterdir()) == []


def test_a_server_that_does_not_answer_times_out_quickly_with_one_warning(hub, silent, monkeypatch, capsys):
    from wcnerf.plugin import compat

    monkeypatch.setattr(lw, "TIMEOUT_S", 1.0)
    monkeypatch.setenv(lw.URL_ENV, silent.url("alexnet-owt-7be5be79.pth"))
    holder = compat.lpips_holder()
    assert not holder.built  # nothing fetched, nothing said, until a metric is wanted
    start = time.monotonic()
    assert not holder
    took = time.monotonic() - start
    assert took < 4.0, took
    assert not holder and holder[:] == []
    other = compat.lpips_holder()  # a second model in the same process: no second attempt
    start = time.monotonic()
    assert not other and time.monotonic() - start < 0.5
    out = capsys.readouterr().out
    assert _warnings(out) == 1, out
    line = next(s for s in out.splitlines() if "LPIPS omitted" in s)
    assert "timed out" in line and lw.NO_DOWNLOAD_ENV in line and compat.LPIPS_ENV in line, line
    assert silent.accepted == 1
    assert not hub.exists() or list(hub.iterdir()) == []


def test_no_download_never_connects(hub, silent, monkeypatch):
    from wcnerf.plugin import compat

    monkeypatch.setenv(lw.NO_DOWNLOAD_ENV, "1")
    monkeypatch.setenv(lw.URL_ENV, silent.url("alexnet-owt-7be5be79.pth"))
    metric, why = compat.build_lpips()
    assert metric is None and lw.NO_DOWNLOAD_ENV in why, why
    time.sleep(0.2)
    assert silent.accepted == 0


def test_a_model_fetches_and_warns_only_when_a_metric_is_computed(hub, server, monkeypatch, capsys):
    """ns-render / ns-export / ns-viewer build the model and compute no metric: nothing is
    fetched and nothing said; ns-eval and training's eval steps compute metrics: one attempt, one warning."""
    pytest.importorskip("nerfstudio")
    from support.nerf_models import build, rays

    monkeypatch.setenv(lw.URL_ENV, server.url("alexnet-missing-7be5be79.pth"))  # 404
    model = build()
    outputs = model.get_outputs_for_camera_ray_bundle(rays(12 * 11).reshape((12, 11)))
    assert server.gets == {} and _warnings(capsys.readouterr().out) == 0
    for _ in range(3):
        metrics, _ = model.get_image_metrics_and_images(outputs, {"image": torch.rand(12, 11, 3)})
        assert "psnr" in metrics and "lpips" not in metrics
    assert server.gets == {"/alexnet-missing-7be5be79.pth": 1}
    out = capsys.readouterr().out
    assert _warnings(out) == 1 and "HTTP 404" in out, out


@pytest.mark.e2e
def test_ns_render_neither_fetches_nor_warns_and_ns_eval_computes_lpips(tmp_path, fern, weights, server):
    from support import ns_server
    from support.helpers import BIN
    from support.tiny import tiny_env, tiny_fern, train_tiny

    run = train_tiny(tmp_path, tiny_fern(tmp_path / "data", fern), iterations=4)
    env = tiny_env(tmp_path / "fresh")  # an empty torch hub cache of its own
    for var in (lw.NO_DOWNLOAD_ENV, "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(var, None)
    name = weights[1]
    env[lw.URL_ENV] = server.url(name)
    res = ns_server.run(
        [str(BIN / "ns-render"), "dataset", "--load-config", str(run / "config.yml"), "--output-path",
         str(tmp_path / "renders"), "--split", "test", "--rendered-output-names", "rgb"],
        cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert "LPIPS" not in log and server.gets == {}, log[-3000:]

    metrics = tmp_path / "metrics.json"
    res = ns_server.run([str(BIN / "ns-eval"), "--load-config", str(run / "config.yml"), "--output-path", str(metrics)],
                        cwd=tmp_path, env=env, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    import json

    assert "lpips" in json.loads(metrics.read_text())["results"], log[-3000:]
    assert server.gets == {f"/{name}": 1} and "LPIPS omitted" not in log
    assert (Path(env["TORCH_HOME"]) / "hub" / "checkpoints" / name).is_file()
