"""Issue 30, points 2 and 5: conditioner options are checked against the chosen conditioner
before any run folder exists; an exclude pattern that matches no layer is refused, naming the
layers it could have matched; ``wcnerf-train`` pre-flights as ``ns-train`` does for wcnerf's
own methods (``--load-dir``, output folder, conditioning options, device) and trains on the CPU
with a one-line notice when the method asks for a CUDA device the machine lacks.

The end-to-end cases run the real ``ns-train`` / ``wcnerf-train`` entry points in forked
children of one interpreter (:mod:`support.ns_server`) on the tiny fern (126 x 94)."""

from __future__ import annotations

import copy
import inspect
import re

import pytest
import torch

pytest.importorskip("nerfstudio")

from support import ns_server  # noqa: E402
from support.helpers import BIN  # noqa: E402
from support.tiny import NERF, NERFACTO, TINY_FACTOR, tiny_env, tiny_fern  # noqa: E402
from wcnerf import conditioning as wc  # noqa: E402
from wcnerf.conditioning.options import UNIVERSAL  # noqa: E402
from wcnerf.plugin.compat import RunInputError  # noqa: E402

CUDA = torch.cuda.is_available()


# ----------------------------------------------------------------------------- the declarations
@pytest.mark.parametrize("method", sorted(wc.REGISTRY))
def test_each_keyword_of_a_conditioner_has_its_values_declared_and_its_defaults_pass(method):
    """The declared values cover exactly the keywords of the conditioner's ``apply`` (a new
    keyword must say what it takes), and every default is accepted (no declaration is stricter
    than the conditioner)."""
    cond = wc.REGISTRY[method]
    params = list(inspect.signature(cond.apply).parameters.values())[2:]
    assert set(cond.options) == {p.name for p in params}
    assert set(wc.accepted_options(method)) == {p.name for p in params} | (set(UNIVERSAL) if method != "none" else set())
    wc.check_options(method, {p.name: p.default for p in params if p.default is not inspect.Parameter.empty})


@pytest.mark.parametrize("method, options, message", [
    ("equilibrate", {"detatch": True}, r"'detatch' is not an option of 'equilibrate' \(its options: mode, detach"),
    ("equilibrate", {"dim": 0}, "'dim' is not an option of 'equilibrate'.*; it is an option of weight-norm$"),
    ("weight-norm", {"mode": "in"}, "'mode' is not an option of 'weight-norm'.*it is an option of equilibrate,"),
    ("equilibrate", {"iters": 0}, r"iters=0: 'equilibrate' takes an integer >= 1"),
    ("equilibrate", {"mode": "rows"}, r"mode='rows': 'equilibrate' takes one of None, 'out', 'in', 'both'"),
    ("equilibrate-in", {"mode": "out"}, r"mode='out': 'equilibrate-in' takes one of None, 'in'"),
    ("equilibrate", {"eps": -1.0}, r"eps=-1.0: 'equilibrate' takes a finite number > 0"),
    ("equilibrate", {"detach": "maybe"}, r"detach='maybe': 'equilibrate' takes True or False"),
    ("weight-norm", {"dim": 2}, r"dim=2: 'weight-norm' takes 0 \(one gain per output\)"),
    ("centered-weight-norm", {"gain_init": "two"}, r"gain_init='two': 'centered-weight-norm' takes one of 'one', 'row-norm'"),
    ("equinorm", {"momentum": 0}, r"momentum=0: 'equinorm' takes a number in \(0, 1\]"),
    ("enorm", {"c": 0}, r"c=0: 'enorm' takes a finite number > 0"),
    ("enorm", {"cycles": 1.5}, r"cycles=1.5: 'enorm' takes an integer >= 1"),
    ("enorm", {"pairs": "0,2"}, r"pairs='0,2': 'enorm' takes a non-empty list of \(producer, consumer"),
    ("none", {"detatch": True}, r"'detatch' is an option of no conditioner \(their options: c, c_rule"),
    ("none", {"mode": "rows"}, r"mode='rows': no conditioner takes this value"),
])  # fmt: skip
def test_an_option_is_refused_by_name_with_what_is_accepted(method, options, message):
    with pytest.raises(ValueError, match=message):
        wc.check_options(method, options)


def test_good_options_pass_and_none_ignores_its_twins_options():
    wc.check_options("equilibrate", {"mode": "in", "detach": True, "eps": 1e-8, "iters": 4, "force_degenerate": True})
    wc.check_options("enorm", {"pairs": [("0", "2")], "c": 1.0, "cycles": 2, "c_rule": "depth-weighted"})
    wc.check_options("equinorm", {"momentum": None, "single_pass": False})
    wc.check_options("none", {"mode": "in"})  # a plain baseline shares its conditioned twin's settings


# ----------------------------------------------------------------------------- ns-train's pre-flight
def _enerf_config(tmp_path, **model):
    from nerfstudio.configs.method_configs import all_methods

    config = copy.deepcopy(all_methods["e-nerf-small"])
    config.output_dir = tmp_path / "out"
    for key, value in model.items():
        setattr(config.pipeline.model, key, value)
    return config


@pytest.mark.parametrize("options, message", [
    ({"detatch": "True"}, "--pipeline.model.conditioning-options: 'detatch' is not an option of 'equilibrate'"),
    ({"iters": "0"}, "--pipeline.model.conditioning-options: iters=0: 'equilibrate' takes an integer >= 1"),
    ({"c": "2"}, "--pipeline.model.conditioning-options: 'c' is not an option of 'equilibrate'.*option of enorm"),
])  # fmt: skip
def test_preflight_refuses_conditioning_options_before_any_folder(tmp_path, options, message):
    config = _enerf_config(tmp_path, conditioning_options=options)
    with pytest.raises(RunInputError, match=message):
        config.preflight()
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
def test_preflight_refuses_a_cuda_device_the_machine_lacks(tmp_path):
    config = _enerf_config(tmp_path)
    config.machine.device_type = "cuda"
    with pytest.raises(RunInputError, match="--machine.device-type cuda: this machine has no CUDA device.*"
                                            "--machine.device-type cpu"):
        config.preflight()


# ----------------------------------------------------------------------------- exclude patterns
def test_an_exclude_pattern_matching_no_layer_names_the_layers():
    from support.nerf_models import build

    with pytest.raises(RunInputError, match=r"--pipeline.model.conditioning-exclude 'field_head.\*': matches no "
                                            r"layer 'equilibrate' could condition.*field_heads.0.net"):
        build(conditioning_exclude=("field_head.*",))
    with pytest.raises(RunInputError, match=r"'nope' 'field_head': matches no layer 'none'"):
        build("none", conditioning_exclude=("nope", "field_heads.*", "field_head"))
    build(conditioning_exclude=("field_heads",))  # a name matches everything below it: accepted


def test_an_exclude_pattern_of_any_method_matching_no_layer_names_the_layers():
    from nerfstudio.configs.method_configs import all_methods
    from nerfstudio.data.scene_box import SceneBox

    from wcnerf.plugin.any_method import conditioned_trainer_config

    def build(*exclude):
        cfg = conditioned_trainer_config(all_methods["tensorf"], "equilibrate").pipeline.model
        cfg.conditioning_exclude = exclude
        box = SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
        return cfg.setup(scene_box=box, num_train_data=2, metadata={}, device="cpu")

    with pytest.raises(RunInputError, match=r"'fields\.\*': matches no layer.*could match: field\.mlp_head\.layers\.0, .*field\.B"):
        build("fields.*")
    assert build("field.mlp_head.*").conditioning_report.count == 2


# ----------------------------------------------------------------------------- wcnerf-train's config
def test_wcnerf_train_gets_the_pre_flight_of_ns_train(tmp_path):
    from wcnerf.plugin.any_method_cli import build_config
    from wcnerf.plugin.trainer import WCTrainerConfig

    config = build_config("nerfacto", args=["--output-dir", str(tmp_path / "out"), "--load-dir", str(tmp_path / "nope")])
    assert isinstance(config, WCTrainerConfig)
    with pytest.raises(RunInputError, match="nope: not found; --load-dir takes the nerfstudio_models/ folder"):
        config.print_to_terminal()  # what ns-train's main calls right before it writes config.yml
    assert not (tmp_path / "out").exists()


def test_wcnerf_train_picks_the_device_as_wcnerf_methods_do():
    from wcnerf.plugin.any_method_cli import build_config

    config = build_config("nerfacto")
    assert (config.machine.device_type, config.mixed_precision) == (("cuda", True) if CUDA else ("cpu", False))


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def runs(fern, tmp_path_factory):
    """Every case's ``(exit code, stdout, stderr)`` and the outputs folder."""
    root = tmp_path_factory.mktemp("rc30")
    scene = tiny_fern(root / "data", fern)
    out = root / "outputs"
    env = tiny_env(root)
    parser = ["--data", str(scene), "--downscale-factor", str(TINY_FACTOR)]

    def ns_train(name, *extra):
        return [BIN / "ns-train", "e-nerf-small", "--output-dir", out, "--experiment-name", "fern", "--timestamp", name,
                "--max-num-iterations", "3", "--steps-per-save", "1000", *NERF.args(), *extra, "llff", *parser]

    def wc_train(name, *extra, iterations=2):
        return [BIN / "wcnerf-train", "nerfacto", "--conditioning", "equilibrate", "--", "--output-dir", out,
                "--experiment-name", "fern", "--timestamp", name, "--max-num-iterations", str(iterations),
                "--steps-per-save", "1000", *NERFACTO.args(), *extra, "llff", "--ndc", "False", *parser]

    cases = {
        "ns-option-key": ns_train("ns-option-key", "--pipeline.model.conditioning-options", "detatch", "True"),
        "ns-option-value": ns_train("ns-option-value", "--pipeline.model.conditioning-options", "mode", "rows"),
        "ns-option-other": ns_train("ns-option-other", "--pipeline.model.conditioning-options", "dim", "0"),
        "ns-exclude-typo": ns_train("ns-exclude-typo", "--pipeline.model.conditioning-exclude", "field_head.*"),
        "wc-train": wc_train("wc-train"),
        "wc-option-key": wc_train("wc-option-key", "--pipeline.model.conditioning-options", "detatch", "True"),
        "wc-exclude-typo": wc_train("wc-exclude-typo", "--pipeline.model.conditioning-exclude", "proposal_network.*"),
        "wc-exclude-all": wc_train("wc-exclude-all", "--pipeline.model.conditioning-exclude", "*"),
        "wc-loaddir-missing": wc_train("wc-loaddir-missing", "--load-dir", root / "nope"),
        "wc-loaddir-other-model": wc_train("wc-loaddir-other-model", "--load-dir",
                                           out / "fern" / "nerfacto" / "wc-train" / "nerfstudio_models",
                                           "--pipeline.model.log2-hashmap-size", "13", iterations=6),
        "wc-output-under-file": wc_train("wc-output-under-file", "--output-dir", root / "a-file" / "out"),
    }
    if not CUDA:
        cases["ns-cuda"] = ns_train("ns-cuda", "--machine.device-type", "cuda")
        cases["wc-cuda"] = wc_train("wc-cuda", "--machine.device-type", "cuda")
    (root / "a-file").write_text("x")
    results = {}
    for name, argv in cases.items():  # in order: wc-loaddir-other-model resumes wc-train's run
        res = ns_server.run(argv, cwd=root, env=env, timeout=600)
        results[name] = (res.returncode, res.stdout, res.stderr)
    return out, results


REFUSED = {
    # case: (what the one error line says, refused before the config is printed)
    "ns-option-key": ("--pipeline.model.conditioning-options: 'detatch' is not an option of 'equilibrate' "
                      "(its options: mode, detach, eps, iters, force_degenerate)", True),
    "ns-option-value": ("--pipeline.model.conditioning-options: mode='rows': 'equilibrate' takes one of None, "
                        "'out', 'in', 'both'", True),
    "ns-option-other": ("'dim' is not an option of 'equilibrate' (its options: mode, detach, eps, iters, "
                        "force_degenerate); it is an option of weight-norm", True),
    "ns-exclude-typo": ("--pipeline.model.conditioning-exclude 'field_head.*': matches no layer 'equilibrate' could "
                        "condition (a typo?); the layers it could match: mlp_base.layers.0", False),
    "ns-cuda": ("--machine.device-type cuda: this machine has no CUDA device", True),
    "wc-option-key": ("--pipeline.model.conditioning-options: 'detatch' is not an option of 'equilibrate'", True),
    "wc-exclude-typo": ("--pipeline.model.conditioning-exclude 'proposal_network.*': matches no layer 'equilibrate' "
                        "could condition (a typo?); the layers it could match: field.", False),
    "wc-exclude-all": ("nothing to condition with 'equilibrate'", False),
    "wc-loaddir-missing": ("nope: not found; --load-dir takes the nerfstudio_models/ folder of a run", True),
    "wc-loaddir-other-model": ("does not fit this method's model", False),
    "wc-output-under-file": ("is a file, so the run folder", True),
    "wc-cuda": ("--machine.device-type cuda: this machine has no CUDA device (torch sees none); train on the CPU "
                "with --machine.device-type cpu", True),
}


def _said(stderr: str) -> list:
    """The lines of ``stderr`` without Python's warnings (nerfstudio's and torch's deprecations:
    a ``path:line: XWarning: ...`` line and the source line under it)."""
    lines, source = [], False
    for line in stderr.splitlines():
        if re.match(r"^\S.*:\d+: \w*Warning: ", line):
            source = True
        elif source and line.startswith("  "):
            source = False
        elif line.strip():
            source = False
            lines.append(line)
    return lines


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_with_one_line_exit_2_and_no_run_folder(runs, name):
    out, results = runs
    if name not in results:
        pytest.skip("this machine has CUDA")
    code, stdout, stderr = results[name]
    said, before_config = REFUSED[name]
    text = stdout + stderr
    assert code == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = _said(stderr)
    assert len(errors) == 1 and said in errors[0], text[-3000:]
    if before_config:
        assert not stdout.strip(), stdout[-2000:]
    method = "e-nerf-small" if name.startswith("ns-") else "nerfacto"
    assert not (out / "fern" / method / name).exists(), f"run folder left behind for {name}"


@pytest.mark.e2e
def test_wcnerf_train_trains_on_the_cpu_it_picked(runs):
    out, results = runs
    code, stdout, stderr = results["wc-train"]
    assert code == 0 and "Traceback" not in stdout + stderr, (stdout + stderr)[-3000:]
    config = (out / "fern" / "nerfacto" / "wc-train" / "config.yml").read_text()
    assert "wcnerf.plugin.trainer.WCTrainerConfig" in config
    notice = "No CUDA device here: nerfacto trains on the CPU, as wcnerf's own methods do"
    if CUDA:
        assert "device_type: cuda" in config and notice not in stdout
    else:
        assert "device_type: cpu" in config and "mixed_precision: false" in config
        assert stdout.count(notice) == 1
        assert stdout.index(notice) < stdout.index("Config")  # after the pre-flight, before the config dump
    assert list((out / "fern" / "nerfacto" / "wc-train" / "nerfstudio_models").glob("step-*.ckpt"))
