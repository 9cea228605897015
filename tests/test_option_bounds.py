"""Issue 30, point 1: every number a user can type is bounded, generated from the option definitions.

For every command (ns-train with each wcnerf method, wcnerf-train on nerfstudio methods, the
shape trainer, the harness, the single-run tools, the converter), the numeric options are read
off its config (:func:`wcnerf.bounds.numeric_options`), not listed here. Each must be covered by
the command's bounds table, and each is tried with 0, -1 and an absurd value through the
command's own entry point: a value outside its bound ends that entry with one line naming the
flag and the value (exit 2 or one of the input errors the project's excepthook turns into exit
2) and no folder; a value inside it is accepted, with a warning where it is absurd.
"""

from __future__ import annotations

import copy
import io
import subprocess
import sys
from pathlib import Path

import pytest

from wcnerf.bounds import Bounds, numeric_options, set_option

PROBES = (0, -1, 10**12)
METHODS = ("e-nerf", "nerf", "e-nerf-small", "nerf-small", "e-nerfacto", "nerfacto-plain", "e-nerfacto-small",
           "nerfacto-plain-small")


def probe_value(default, probe):
    """The probe shaped like the option (a tuple option gets a tuple)."""
    if isinstance(default, tuple):
        return (probe,) * max(1, len(default))
    return probe


def walk(config, bounds: Bounds, refused_entry, tmp_path: Path):
    """Try every numeric option of ``config`` with each probe; returns a list of what went wrong.
    ``refused_entry(config)`` runs the command's entry with a refused value and returns the one
    line it printed or raised (it must not return normally with exit 0)."""
    assert not bounds.uncovered(config), f"numeric options without a bound: {bounds.uncovered(config)}"
    wrong = []
    for path, default in numeric_options(config).items():
        bound = bounds.bound_of(path)
        for probe in PROBES:
            value = probe_value(default, probe)
            changed = set_option(config, path, value)
            values = value if isinstance(value, tuple) else (value,)
            if all(bound.allows(v) for v in values):
                refusals, warnings = bounds.problems(numeric_options(changed))
                if refusals:
                    wrong.append(f"{path}={probe}: allowed by its bound but refused: {refusals}")
                if probe == PROBES[-1] and not warnings:
                    wrong.append(f"{path}={probe}: absurd, accepted without a warning")
                continue
            line = refused_entry(changed)
            flag = bounds.flag(path)
            if not line.startswith(f"{flag} {probe}") or "must be" not in line or "\n" in line.strip():
                wrong.append(f"{path}={probe}: refusal {line!r} does not name {flag} {probe} and its range")
            if any(tmp_path.iterdir()):
                wrong.append(f"{path}={probe}: left {sorted(p.name for p in tmp_path.iterdir())}")
    return wrong


def _input_error_line(call) -> str:
    """The message of the input error ``call`` raises (what the excepthook prints after ``error: ``)."""
    from wcnerf.plugin.compat import _input_error_in

    try:
        call()
    except BaseException as exc:  # noqa: BLE001
        err = _input_error_in(exc)
        assert err is not None, f"not an input error (would be a traceback): {type(exc).__name__}: {exc}"
        return str(err)
    raise AssertionError("accepted a value outside its bound")


def _exit_2_line(code: int, err: str) -> str:
    assert code == 2, f"exit {code}"
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(("error: ", "refused: ")), err
    return lines[0].split(": ", 1)[1]


# --------------------------------------------------------------------------- ns-train and wcnerf-train
def _ns_train_entry(tmp_path):
    from nerfstudio.scripts.train import main as ns_train_main

    def entry(config):
        config = copy.deepcopy(config)
        config.output_dir = tmp_path / "outputs"
        return _input_error_line(lambda: ns_train_main(config))

    return entry


@pytest.mark.parametrize("method", METHODS)
def test_every_number_of_ns_train_is_bounded(method, tmp_path):
    from nerfstudio.configs.method_configs import all_methods

    from wcnerf.plugin.option_bounds import NS_TRAIN_BOUNDS

    config = copy.deepcopy(all_methods[method])
    assert walk(config, NS_TRAIN_BOUNDS, _ns_train_entry(tmp_path), tmp_path) == []


@pytest.mark.parametrize("method", ["nerfacto", "vanilla-nerf"])
def test_every_number_of_wcnerf_train_is_bounded(method, tmp_path):
    from wcnerf.plugin.any_method_cli import build_config
    from wcnerf.plugin.option_bounds import NS_TRAIN_BOUNDS

    config = build_config(method, "equilibrate", "fields", [])
    assert walk(config, NS_TRAIN_BOUNDS, _ns_train_entry(tmp_path), tmp_path) == []


# --------------------------------------------------------------------------- our own commands
def test_every_number_of_the_shape_trainer_is_bounded(tmp_path, capsys):
    from wcnerf.shape.cli import run
    from wcnerf.shape.train import FIT_BOUNDS, FitConfig

    def entry(cfg):
        code = run(cfg)
        return _exit_2_line(code, capsys.readouterr().err)

    config = FitConfig(mesh=tmp_path / "absent.obj", output_dir=tmp_path / "outputs")
    assert walk(config, FIT_BOUNDS, entry, tmp_path) == []


def test_every_number_of_the_harness_is_bounded(tmp_path):
    from rich.console import Console

    from wcnerf.eval.cli import COMPARE_BOUNDS, Compare

    def entry(cmd):
        out = io.StringIO()
        code = cmd.main(console=Console(file=out, width=400))
        return _exit_2_line(code, out.getvalue())

    config = Compare(output_root=tmp_path / "outputs")
    assert walk(config, COMPARE_BOUNDS, entry, tmp_path) == []


def test_a_protocols_numbers_are_bounded(tmp_path):
    from wcnerf.eval.protocols import PROTOCOL_BOUNDS, ProtocolError, load_protocol

    base = (Path(__file__).resolve().parents[1] / "configs" / "protocols" / "cpu.yaml").read_text()
    for key, text in [("seeds", "seeds: [0, -1]"), ("threads", "threads: 0"), ("timeout_minutes", "timeout_minutes: -1")]:
        bad = tmp_path / f"{key}.yaml"
        bad.write_text("\n".join(ln for ln in base.splitlines() if not ln.startswith(key + ":")) + "\n" + text + "\n")
        with pytest.raises(ProtocolError, match=rf"{bad}: {key} .*must be"):
            load_protocol(bad)
    assert not PROTOCOL_BOUNDS.uncovered(load_protocol("cpu"))


TOOLS = ["wcnerf.tools.spiral:Spiral", "wcnerf.tools.heldout:Heldout", "wcnerf.tools.scaled_eval:ScaledEval",
         "wcnerf.tools.summary:Summary"]


@pytest.mark.parametrize("tool", TOOLS)
def test_every_number_of_the_single_run_tools_is_bounded(tool, tmp_path, capsys):
    import importlib

    from wcnerf.tools.runs import NO_BOUNDS, run_parsed

    module, name = tool.split(":")
    cls = getattr(importlib.import_module(module), name)

    def entry(t):
        return _exit_2_line(run_parsed(t), capsys.readouterr().err)

    config = cls(run=tmp_path / "run")
    assert walk(config, getattr(cls, "BOUNDS", NO_BOUNDS), entry, tmp_path) == []


def test_every_number_of_the_gpu_check_and_the_converter_is_bounded(tmp_path, capsys):
    from wcnerf.bounds import tyro_flag
    from wcnerf.data.convert import ConvertConfig
    from wcnerf.data.convert import main as convert_main
    from wcnerf.data.llff import LLFF_BOUNDS
    from wcnerf.tools.gpu_check import GpuCheck
    from wcnerf.tools.gpu_check import main as gpu_check_main

    def args_of(cfg, default):
        return [a for path, value in numeric_options(cfg).items() if value != numeric_options(default)[path]
                for a in (tyro_flag(path), str(value))]

    default_check = GpuCheck(out_dir=tmp_path / "gpu")
    assert walk(default_check, GpuCheck.BOUNDS,
                lambda cfg: _exit_2_line(gpu_check_main(["--out-dir", str(tmp_path / "gpu"), *args_of(cfg, default_check)]),
                                         capsys.readouterr().err), tmp_path) == []
    scene, out = tmp_path / "scene", tmp_path / "converted"
    default_convert = ConvertConfig(scene=scene, out=out)
    assert walk(default_convert, LLFF_BOUNDS,
                lambda cfg: _exit_2_line(convert_main([str(scene), str(out), *args_of(cfg, default_convert)]),
                                         capsys.readouterr().err), tmp_path) == []


# --------------------------------------------------------------------------- the real processes
@pytest.mark.e2e
@pytest.mark.parametrize("argv, line", [
    (["ns-train", "e-nerf-small", "--pipeline.model.num-coarse-samples", "0"],
     "error: --pipeline.model.num-coarse-samples 0: must be >= 1"),
    (["ns-train", "e-nerfacto-small", "--logging.steps-per-log", "0"], "error: --logging.steps-per-log 0: must be >= 1"),
    (["wcnerf-shape-fit", "--optim.batch-size", "0"], "error: --optim.batch-size 0: must be >= 1"),
    (["wcnerf-compare", "--workers", "0"], "refused: --workers 0: must be >= 1"),
    (["wcnerf-spiral", "--data", "x", "--frames", "-1"], "error: --frames -1: must be >= 1"),
])  # fmt: skip
def test_a_refused_number_is_one_line_and_exit_2_from_the_shell(argv, line, tmp_path):
    exe = Path(sys.executable).parent / argv[0]
    extra = ["--output-dir", str(tmp_path / "out")] if argv[0] in ("ns-train", "wcnerf-shape-fit") else []
    res = subprocess.run([str(exe), *argv[1:], *extra], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    assert line in res.stdout + res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()
