"""NeRF vs E-NeRF comparison harness (``scripts/compare_llff.py``).

* :mod:`wcnerf.eval.protocols` - protocols (``configs/protocols/*.yaml``): ``paper``, ``cpu``;
* :mod:`wcnerf.eval.runs` - one run: its spec, folder, state (``status.json``,
  ``metrics.json``) and execution through a replaceable "train and evaluate" callable;
* :mod:`wcnerf.eval.sweep` - what is swept (methods, scenes by the LLFF lookup of
  :mod:`wcnerf.data.llff_scene`), the plan, and the resumable sweep over scenes x methods x seeds;
* :mod:`wcnerf.eval.reports` - ``results.csv``, ``table.md``, ``curves.png``, ``renders/`` from
  the run folders;
* :mod:`wcnerf.eval.ns_runner` - the callable through ``ns-train`` / ``ns-eval`` subprocesses
  (depends on :mod:`wcnerf.eval.runs` only);
* :mod:`wcnerf.eval.cli` - the command line (``main``);
* :mod:`wcnerf.eval.table` - ``results.csv`` and ``table.md`` (the paper's Table 4 layout);
* :mod:`wcnerf.eval.plots` - ``curves.png`` and ``renders/``.

See the README section "Reproducing the E-NeRF vs NeRF table".
"""
