"""compare_llff.py --dry-run prints each run's state and a missing scene's whole error."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO


def test_dry_run_keeps_states_and_whole_scene_errors(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts/compare_llff.py"), "--protocol", "cpu", "--scenes", "fern,nosuchscene",
         "--methods", "nerf", "--seeds", "0", "--output-root", str(tmp_path), "--dry-run"],
        capture_output=True, text=True, timeout=300, env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    # rich must not eat "[pending]" as markup
    assert "[pending] fern nerf seed 0:" in out.stdout
    # every line of the lookup error, not only the first
    assert "nosuchscene: LLFF scene folder not found. Looked in:" in out.stdout
    assert "llff/nosuchscene" in out.stdout and "WCNERF_DATA" in out.stdout
