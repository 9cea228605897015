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
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

__all__ = ["build_config", "main"]


def build_config(method: str, conditioning: str = "equilibrate", scope: str = "fields", args: Optional[List[str]] = None):
    """The conditioned ``TrainerConfig`` of ``method`` with ``args`` (ns-train arguments) applied."""
    import tyro

    from nerfstudio.configs.method_configs import all_methods

    from wcnerf.plugin.any_method import conditioned_trainer_config

    if method not in all_methods:
        raise SystemExit(f"wcnerf-train: unknown method {method!r}; registered: {', '.join(sorted(all_methods))}")
    default = conditioned_trainer_config(all_methods[method], conditioning, conditioning_scope=scope)
    return tyro.cli(
        tyro.conf.SuppressFixed[tyro.conf.FlagConversionOff[type(default)]],  # type: ignore[index]
        default=default,
        args=list(args or []),
        prog=f"wcnerf-train {method} --conditioning {conditioning} --",
        description=f"ns-train {method}, every Linear/Conv2d of its fields conditioned with {conditioning!r}.",
    )


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    from wcnerf.conditioning import available

    parser = argparse.ArgumentParser(
        prog="wcnerf-train",
        description="Train any registered nerfstudio method with a weight conditioner from wcnerf's registry. "
                    "Arguments after -- are ns-train's (use '-- --help' for them).")
    parser.add_argument("method", nargs="?", help="any method ns-train knows (nerfstudio's, or another plugin's)")
    parser.add_argument("--conditioning", default="equilibrate", choices=list(available()),
                        help="the conditioner (default: equilibrate = equilibrate-out)")
    parser.add_argument("--scope", default="fields", choices=["fields", "model"],
                        help="fields: every Linear/Conv2d inside the model's nerfstudio Fields (fields and proposal "
                             "networks); model: every Linear/Conv2d of the model (metrics excepted)")
    parser.add_argument("--list", action="store_true", help="list the registered methods and exit")
    ns = parser.parse_args(argv)
    if ns.list:
        from nerfstudio.configs.method_configs import all_descriptions, all_methods

        from nerfstudio.models.base_model import ModelConfig

        for name in sorted(all_methods):
            model = getattr(getattr(all_methods[name], "pipeline", None), "model", None)
            kind = type(model).__name__ if isinstance(model, ModelConfig) else "not installed"
            print(f"{name:28s} {kind:28s} {all_descriptions.get(name, '')}")
        return 0
    if not ns.method:
        parser.error("a method is required (wcnerf-train --list shows them)")
    from wcnerf.plugin.any_method import NothingToCondition

    try:
        config = build_config(ns.method, ns.conditioning, ns.scope, rest)
    except ValueError as e:
        print(f"wcnerf-train: {e}", file=sys.stderr)
        return 2
    from nerfstudio.scripts.train import main as ns_train_main

    try:
        ns_train_main(config)
    except NothingToCondition as e:
        print(f"wcnerf-train: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
