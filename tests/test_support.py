"""The test support itself: the e2e guard (tests/support/tiers.py) and the tiny presets
(tests/support/tiny.py), checked against what they stand for."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.helpers import BIN, REPO
from support.tiers import guarded_command
from support.tiny import NERF, NERFACTO, TINY_FACTOR, tiny_protocol

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("argv, program", [
    ([BIN / "ns-train", "e-nerf-small", "--data", "x"], "ns-train"),
    (["ns-eval", "--load-config", "c.yml"], "ns-eval"),
    ("ns-render camera-path --load-config c.yml", "ns-render"),
    ([sys.executable, str(REPO / "scripts" / "compare_llff.py"), "--protocol", "cpu"], str(REPO / "scripts" / "compare_llff.py")),
    ([sys.executable, "-m", "wcnerf.plugin.any_method_cli", "nerfacto"], "wcnerf.plugin.any_method_cli"),
    ([sys.executable, "-m", "nerfstudio.scripts.train", "nerf-small"], "nerfstudio.scripts.train"),
    ([sys.executable, "-m", "wcnerf.eval.ns_eval", "--load-config", "c.yml"], "wcnerf.eval.ns_eval"),
    ([BIN / "wcnerf-summary", "outputs/fern/e-nerf-small/run"], "wcnerf-summary"),
    (["wcnerf-spiral", "RUN"], "wcnerf-spiral"),
    ("wcnerf-heldout RUN --view 2", "wcnerf-heldout"),
    (["wcnerf-scaled-eval", "RUN"], "wcnerf-scaled-eval"),
    (["wcnerf-llff-to-nerfstudio", "data/fern"], None),
    ([sys.executable, "-m", "wcnerf.tools.summary", "RUN"], "wcnerf.tools.summary"),
    ([sys.executable, "-m", "wcnerf.tools.spiral", "RUN"], "wcnerf.tools.spiral"),
    ([sys.executable, "-m", "wcnerf.tools.heldout", "RUN"], "wcnerf.tools.heldout"),
    ([sys.executable, "-m", "wcnerf.tools.scaled_eval", "RUN"], "wcnerf.tools.scaled_eval"),
    ([sys.executable, "-m", "wcnerf.tools.train_enerf", "e-nerf-small"], "wcnerf.tools.train_enerf"),
    ([sys.executable, "-m", "wcnerf.tools.runs"], None),
    ([sys.executable, str(TESTS / "support" / "ns_server.py")], str(TESTS / "support" / "ns_server.py")),
    (["/usr/lib/ray/core/src/ray/raylet/raylet", "--node-ip-address=127.0.0.1"], "raylet"),
    ([sys.executable, "-c", "print(1)"], None),
    ([sys.executable, "-m", "venv", "env"], None),
    (["git", "ls-files"], None),
    (["mount", "-t", "tmpfs"], None),
])  # fmt: skip
def test_guarded_commands(argv, program):
    assert guarded_command(argv) == program


def test_an_unmarked_test_that_starts_ns_train_fails_and_a_marked_one_passes(tmp_path):
    """The guard as a plugin of a pytest run of its own: the unmarked test is an error (at its
    teardown) even though it caught the refusal; the e2e one gets past the guard (to a program
    path that does not exist, so nothing is started)."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""
        import subprocess
        import pytest

        def test_unmarked():
            try:
                subprocess.run(["/nonexistent/ns-train", "--help"])
            except Exception:
                pass

        @pytest.mark.e2e
        def test_marked():
            with pytest.raises(FileNotFoundError):
                subprocess.run(["/nonexistent/ns-train", "--help"])

        def test_unguarded():
            assert subprocess.run(["true"]).returncode == 0
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "support.tiers", "-p", "no:cacheprovider",
                          "-p", "no:xdist", "-W", "ignore", str(tmp_path / "test_inner.py")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode != 0 and "3 passed, 1 error" in res.stdout, res.stdout[-3000:]
    assert "ERROR at teardown of test_unmarked" in res.stdout
    assert "started without the e2e marker: ns-train" in res.stdout


def test_the_tiny_presets_args_and_config_are_one_definition():
    """Every override is one flag of ``args()`` with its value, and ``config()`` holds it."""
    pytest.importorskip("nerfstudio")
    for preset, method in ((NERF, "e-nerf-small"), (NERFACTO, "e-nerfacto-small")):
        args = preset.args()
        flags = [a for a in args if a.startswith("--")]
        assert len(flags) == len(preset.overrides()) == len(set(flags))
        cfg = preset.config(method)
        for path, value in preset.overrides().items():
            target = cfg
            for name in path.split("."):
                target = getattr(target, name)
            assert target == (tuple(value) if isinstance(value, list) else value), path
            i = args.index("--" + path.replace("_", "-"))
            words = list(value) if isinstance(value, (tuple, list)) else [value]
            assert args[i + 1:i + 1 + len(words)] == [str(w) for w in words], path
    assert NERF.args(vis="viewer")[1] == "viewer" and NERF.args(pipeline__model__analysis_every=0)[-1] != "0"


def test_the_tiny_protocol_trains_the_preset():
    from wcnerf.eval.protocols import load_protocol

    def protocol(tmp):
        (tmp / "tiny.yaml").write_text(tiny_protocol(6))
        return load_protocol(tmp / "tiny.yaml")

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = protocol(Path(tmp))
    assert p.max_num_iterations == 6 and p.overrides["pipeline.datamanager.dataparser.downscale_factor"] == TINY_FACTOR
    model_flags = [a for a in NERF.args() if a.startswith("--pipeline.")]
    flags = ["--" + k.replace("_", "-") for k in p.overrides if k.startswith("pipeline.") and ".dataparser." not in k]
    assert flags == model_flags
