"""Run many ``ns-train`` / ``ns-eval`` command lines in one interpreter (a plain module, not a
test module). Importing nerfstudio and discovering its methods takes tens of seconds on a small
machine; this driver does it once, then runs each case in a forked child that calls the real
console-script entry point with that case's argv, exactly as the ``ns-train`` script would
(an uncaught exception goes through ``sys.excepthook``, so wcnerf's input-error hook acts as in
a real run). Cases run in order, so a later case may use an earlier one's run folder.

    python tests/support/ns_cases.py cases.json      # [{"name", "entry": "train"|"eval"|"shape", "argv": [...],
                                             #   "before": optional code run first in the driver,
                                             #   "child": optional code run in the child (patches,
                                             #   e.g. a SIGKILL at a chosen point)}, ...]

``shape`` is ``shape_fit.py`` (:func:`wcnerf.shape.cli.main`). A child killed by a signal has
the negative signal number as its code (-9 for SIGKILL).

Writes ``<name>.out``, ``<name>.err`` and ``results.json`` (``{name: exit code}``) beside
cases.json.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def main(cases_file: str) -> int:
    import nerfstudio.scripts.eval as ns_eval
    import nerfstudio.scripts.train as ns_train
    from nerfstudio.configs import method_configs  # noqa: F401 - method discovery, once

    from wcnerf.shape.cli import main as shape_main

    def shape_fit() -> None:
        sys.exit(shape_main(sys.argv[1:]))

    entries = {"train": ns_train.entrypoint, "eval": ns_eval.entrypoint, "shape": shape_fit}
    cases_path = Path(cases_file)
    folder = cases_path.parent
    results = {}
    for case in json.loads(cases_path.read_text()):
        name = case["name"]
        if case.get("before"):
            exec(case["before"], {"Path": Path})  # noqa: S102 - test set-up code from the test itself
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # child: the entry point with this case's argv and output files
            out = os.open(folder / f"{name}.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            err = os.open(folder / f"{name}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(err, 2)
            code = 0
            try:
                sys.argv = [f"ns-{case['entry']}", *case["argv"]]
                if case.get("child"):
                    exec(case["child"], {"Path": Path})  # noqa: S102 - test code from the test itself
                entries[case["entry"]]()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - as the interpreter does with an uncaught exception
                sys.excepthook(*sys.exc_info())
                code = 1
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:  # noqa: BLE001
                traceback.print_exc()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        results[name] = os.waitstatus_to_exitcode(status)
        (folder / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
