"""Run many ``ns-train`` / ``ns-eval`` command lines in one interpreter (a plain module, not a
test module). Importing nerfstudio and discovering its methods takes tens of seconds on a small
machine; this driver does it once, then runs each case in a forked child that calls the real
console-script entry point with that case's argv, exactly as the ``ns-train`` script would
(an uncaught exception goes through ``sys.excepthook``, so wcnerf's input-error hook acts as in
a real run). The child is :mod:`support.ns_server`'s. Cases run in order, so a later case may
use an earlier one's run folder.

    python tests/support/ns_cases.py cases.json      # [{"name", "entry": "train"|"eval"|"shape"|"any"|"compare",
                                             #   "argv": [...], "cwd": optional working folder,
                                             #   "before": optional code run first in the driver,
                                             #   "child": optional code run in the child (patches,
                                             #   e.g. a SIGKILL at a chosen point)}, ...]

``shape`` is ``shape_fit.py`` (:func:`wcnerf.shape.cli.main`), ``any`` is ``wcnerf-train``, ``compare``
is ``wcnerf-compare``. A child killed by a signal has
the negative signal number as its code (-9 for SIGKILL).

Writes ``<name>.out``, ``<name>.err`` and ``results.json`` (``{name: exit code}``) beside
cases.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


ENTRIES = {"train": "ns-train", "eval": "ns-eval", "shape": "wcnerf-shape-fit", "any": "wcnerf-train",
           "compare": "wcnerf-compare"}
"""A case's ``entry`` -> the console script it runs."""


def main(cases_file: str) -> int:
    from ns_server import _child, preload  # this folder is sys.path[0] when run as a script

    preload(["wcnerf.shape.cli"])
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
        if pid == 0:  # child: the command with this case's argv, output files and child code
            os._exit(_child({"argv": [ENTRIES[case["entry"]], *case["argv"]], "cwd": case.get("cwd", os.getcwd()),
                             "env": dict(os.environ), "out": str(folder / f"{name}.out"),
                             "err": str(folder / f"{name}.err"), "child": case.get("child")}))  # fmt: skip
        _, status = os.waitpid(pid, 0)
        results[name] = os.waitstatus_to_exitcode(status)
        (folder / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
