"""NeRF vs E-NeRF comparison harness (``scripts/compare_llff.py``).

* :mod:`wcnerf.eval.protocols` - protocols (``configs/protocols/*.yaml``): ``paper``, ``cpu``;
* :mod:`wcnerf.eval.harness` - the resumable sweep over scenes x methods x seeds, with the
  "train and evaluate one run" step as a replaceable callable;
* :mod:`wcnerf.eval.ns_runner` - that step through ``ns-train`` / ``ns-eval`` subprocesses;
* :mod:`wcnerf.eval.table` - ``results.csv`` and ``table.md`` (the paper's Table 4 layout);
* :mod:`wcnerf.eval.plots` - ``curves.png`` and ``renders/``.

See the README section "Reproducing the E-NeRF vs NeRF table".
"""
