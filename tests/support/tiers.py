"""The test tiers: which markers imply ``e2e``, the ``cuda`` tier skipped (with its reason) where
torch sees no CUDA GPU, the order tests run in, and the guard that fails a test without the
``e2e`` marker that starts what only an ``e2e`` test may start. A pytest plugin:
tests/conftest.py imports its hook and fixture; tests/test_support.py runs it on a test of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Optional, Sequence

import pytest

IMPLY_E2E = ("browser", "packaging")
"""Markers that make a test ``e2e`` too."""

GUARDED_PROGRAMS = re.compile(r"^(ns-(train|eval|render|export|viewer)|wcnerf-(train|compare|shape-fit|summary|spiral|heldout|scaled-eval)|raylet|gcs_server)$")
GUARDED_SCRIPTS = re.compile(r"(^|/)(scripts/(train_enerf|compare_llff|shape_fit|llff_spiral)|support/ns_(cases|server))\.py$")
GUARDED_MODULES = re.compile(r"^(wcnerf\.(eval\.cli|eval\.ns_eval|plugin\.any_method_cli|shape\.cli|tools\.(summary|spiral|heldout|scaled_eval|train_enerf))|nerfstudio\.scripts\.\w+)$")


def guarded_command(args) -> Optional[str]:
    """The program in ``args`` (a ``subprocess`` argument) that only an ``e2e`` test may start, or None."""
    argv: Sequence = args.split() if isinstance(args, str) else [args] if isinstance(args, (bytes, os.PathLike)) else list(args)
    argv = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in argv]
    if not argv:
        return None
    if GUARDED_PROGRAMS.match(os.path.basename(argv[0])):
        return os.path.basename(argv[0])
    for i, word in enumerate(argv[1:4], 1):
        if GUARDED_SCRIPTS.search(word) or (argv[i - 1] == "-m" and GUARDED_MODULES.match(word)):
            return word
    return None


def cuda_skip_reason() -> Optional[str]:
    """Why the ``cuda`` tier cannot run here (torch sees no CUDA GPU), or None when it can."""
    import torch

    if torch.cuda.is_available():
        return None
    build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"cuda tier: torch.cuda.is_available() is False (torch {torch.__version__}, {build}); "
            "it runs on a machine with a CUDA GPU (docs/tests.md)")


def pytest_collection_modifyitems(items):
    """Mark what ``browser`` / ``packaging`` imply, skip the ``cuda`` tier without a CUDA GPU,
    and run the ``e2e`` tests first (a stable order, the same in every xdist worker): the long
    tests start early and the short ones fill the workers' tails."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    reason = cuda_skip_reason() if cuda_items else None
    for item in items:
        if any(item.get_closest_marker(m) for m in IMPLY_E2E) and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.e2e)
    for item in cuda_items if reason else ():
        item.add_marker(pytest.mark.skip(reason=reason))
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


@pytest.fixture(autouse=True)
def _e2e_guard(request, monkeypatch):
    """Fail a test without the ``e2e`` marker that starts a guarded program or trains a nerfstudio
    model in-process (``Trainer.train``): the start itself raises, and the test fails at teardown
    even where the code under test caught that."""
    if request.node.get_closest_marker("e2e"):
        yield
        return
    started = []

    def refuse(what: str):
        started.append(what)
        raise RuntimeError(f"{what} started by a test without the e2e marker (tests/support/tiers.py)")

    execute_child = subprocess.Popen._execute_child

    def guarded_execute_child(self, args, *rest, **kwargs):
        what = guarded_command(args)
        if what:
            refuse(what)
        return execute_child(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "_execute_child", guarded_execute_child)
    trainer = sys.modules.get("nerfstudio.engine.trainer")
    if trainer is not None:
        monkeypatch.setattr(trainer.Trainer, "train", lambda self, *a, **k: refuse("Trainer.train (nerfstudio)"))
    yield
    if started:
        pytest.fail(f"started without the e2e marker: {', '.join(started)}; mark the test e2e (docs/tests.md)")
