"""``wcnerf-train``: train any registered nerfstudio method with a weight conditioner.

    wcnerf-train METHOD [--conditioning NAME] [--scope fields|model] -- [ns-train arguments]
    wcnerf-train --list                      # every registered method; what it conditions is said at start-up

METHOD is any name ``ns-train`` knows (nerfstudio's own, or one from another installed plugin).
The method's ``TrainerConfig`` is copied, its model config replaced by the conditioned one
(:mod:`wcnerf.plugin.any_method`), and the arguments after ``--`` are parsed by tyro exactly as
``ns-train METHOD`` parses them (``--data``, the dataparser subcommand, ``--pipeline.model.*``
including ``--pipeline.model.conditioning-options``, ``--pipeline.model.analysis-every``, ...);
then nerfstudio's own ``ns-train`` main runs. The run folder is the method's
(``outputs/<experiment>/<METHOD>/<timestamp>``: ``ns-eval`` looks the method name up in
nerfstudio's registry); its ``config.yml`` rebuilds the conditioned model.

The run goes through the same pre-flight as ``ns-train`` for wcnerf's own methods (its
``TrainerConfig`` becomes a ``WCTrainerConfig``: the scene, the output folder, ``--load-dir``,
the conditioning options and the device are checked before the run folder is made, and a
refusal is one line with exit code 2). A method that asks for CUDA on a machine without it
trains on the CPU, as wcnerf's own methods do, and says so in one line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import List, Literal, Optional

import tyro
from typing_extensions import Annotated

__all__ = ["TrainAnyMethod", "build_config", "main"]


def _conditioners():
    """The registry's names as a Literal, built when parsing (conditioners registered after import included).
    tyro shows such a field's default as a list, hence the hand-written help hint below."""
    from wcnerf.conditioning import available

    return Literal[tuple(available())]  # type: ignore[misc]


@dataclass
class TrainAnyMethod:
    """Train any registered nerfstudio method with a weight conditioner from wcnerf's registry.
    Arguments after -- are ns-train's (use '-- --help' for them)."""

    method: tyro.conf.Positional[Annotated[Optional[str], tyro.conf.arg(
        metavar="METHOD", help_behavior_hint="(required unless --list)")]] = None
    """Any method ns-train knows (nerfstudio's, or another plugin's)."""
    conditioning: Annotated[str, tyro.conf.arg(
        constructor_factory=_conditioners, help_behavior_hint="(default: equilibrate)")] = "equilibrate"
    """The conditioner (equilibrate = equilibrate-out)."""
    scope: Literal["fields", "model"] = "fields"
    """fields: every Linear/Conv2d inside the model's nerfstudio Fields (fields and proposal networks);
    model: every Linear/Conv2d of the model (metrics excepted)."""
    list_methods: Annotated[bool, tyro.conf.arg(name="list")] = False
    """List the registered methods and exit."""

    def main(self, ns_train_args: Optional[List[str]] = None) -> int:
        """List, or train ``method`` with ``ns_train_args`` (the arguments after ``--``); exit code."""
        if self.list_methods:
            from nerfstudio.configs.method_configs import all_descriptions, all_methods

            from nerfstudio.models.base_model import ModelConfig

            for name in sorted(all_methods):
                model = getattr(getattr(all_methods[name], "pipeline", None), "model", None)
                kind = type(model).__name__ if isinstance(model, ModelConfig) else "not installed"
                print(f"{name:28s} {kind:28s} {all_descriptions.get(name, '')}")
            return 0
        if not self.method:
            print("wcnerf-train: error: a method is required (wcnerf-train --list shows them)", file=sys.stderr)
            return 2
        from wcnerf.plugin.any_method import NothingToCondition, check_device
        from wcnerf.plugin.compat import remove_config_only_run_dirs
        from wcnerf.plugin.conditioned import check_conditioning_options
        from wcnerf.plugin.trainer import WCTrainerConfig

        try:
            config = build_config(self.method, self.conditioning, self.scope, ns_train_args)
        except ValueError as e:
            print(f"wcnerf-train: {e}", file=sys.stderr)
            return 2
        if not isinstance(config, WCTrainerConfig):  # another plugin's trainer: the checks it can take
            check_device(config)
            check_conditioning_options(config.pipeline.model)
        from nerfstudio.scripts.train import main as ns_train_main

        try:
            ns_train_main(config)
        except NothingToCondition as e:
            remove_config_only_run_dirs()  # found once the model is built, after the run folder was made
            print(f"wcnerf-train: {e}", file=sys.stderr)
            return 2
        return 0


def build_config(method: str, conditioning: str = "equilibrate", scope: str = "fields", args: Optional[List[str]] = None):
    """The conditioned ``TrainerConfig`` of ``method`` with ``args`` (ns-train arguments) applied."""
    from nerfstudio.configs.method_configs import all_methods

    from wcnerf.plugin.any_method import conditioned_trainer_config, settle_cuda_default, wc_trainer_config

    if method not in all_methods:
        raise SystemExit(f"wcnerf-train: unknown method {method!r}; registered: {', '.join(sorted(all_methods))}")
    default = wc_trainer_config(conditioned_trainer_config(all_methods[method], conditioning, conditioning_scope=scope))
    on_cpu = settle_cuda_default(default)
    config = tyro.cli(
        tyro.conf.SuppressFixed[tyro.conf.FlagConversionOff[type(default)]],  # type: ignore[index]
        default=default,
        args=list(args or []),
        prog=f"wcnerf-train {method} --conditioning {conditioning} --",
        description=f"ns-train {method}, every Linear/Conv2d of its fields conditioned with {conditioning!r}.",
    )
    asked = any(a.split("=")[0] in ("--machine.device-type", "--machine.device_type") for a in args or [])
    if on_cpu and not asked:
        _say_cpu(config, method)
    return config


def _say_cpu(config, method: str) -> None:
    """One line saying the run trains on the CPU: after the pre-flight (a run-start notice of
    wcnerf's trainer), or now for a trainer without one."""
    from wcnerf.plugin.trainer import START_NOTICES, WCTrainerConfig

    line = (f"No CUDA device here: {method} trains on the CPU, as wcnerf's own methods do "
            "(its config asks for --machine.device-type cuda).")
    if not isinstance(config, WCTrainerConfig):
        print(line)
        return
    before = START_NOTICES.get(config.method_name)
    START_NOTICES[config.method_name] = lambda c: "\n".join(x for x in (before(c) if before else None, line) if x)


OWN_OPTIONS = ("--conditioning", "--scope", "--list", "--help", "-h")
"""wcnerf-train's own options (before ``--``); any other option there is ns-train's."""


def main(argv: Optional[List[str]] = None) -> int:
    """``wcnerf-train``: the part of ``argv`` before ``--`` is ours, the rest ns-train's."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    else:
        theirs = [a for a in argv if a.startswith("-") and a.split("=")[0] not in OWN_OPTIONS]
        if theirs:  # ns-train's options before a missing `--`
            print(f"wcnerf-train: {' '.join(theirs)}: not an option of wcnerf-train; ns-train's arguments go after `--`:"
                  f" wcnerf-train METHOD [--conditioning NAME] -- {' '.join(theirs)} ...", file=sys.stderr)
            return 2
    command = tyro.cli(TrainAnyMethod, args=argv, prog="wcnerf-train",
                       config=(tyro.conf.FlagCreatePairsOff,))
    return command.main(rest)


if __name__ == "__main__":
    sys.exit(main())
