"""The comparison harness (``wcnerf-compare``): methods under weight conditioners over scenes
x seeds, through nerfstudio (docs/compare.md).

* :mod:`wcnerf.eval.protocols` - protocols (``configs/protocols/*.yaml``): base method,
  dataparser, overrides of nerfstudio's config;
* :mod:`wcnerf.eval.plan` - what is swept, and each run's ``TrainerConfig`` (its one record),
  built in-process and written into the run folder;
* :mod:`wcnerf.eval.execution` - how runs are executed (device, threads, workers, allocator),
  decided once;
* :mod:`wcnerf.eval.runs` - one run: its spec, folder, state (``status.json``,
  ``metrics.json``) and execution through a replaceable "train and evaluate" callable;
* :mod:`wcnerf.eval.ns_runner` - that callable through ``ns-train --load-config`` / ``ns-eval``;
* :mod:`wcnerf.eval.workers`, :mod:`wcnerf.eval.executors`, :mod:`wcnerf.eval.sweep` - workers
  claiming runs by lease, the engines (local, Ray, SLURM) starting them, the resumable sweep;
* :mod:`wcnerf.eval.reports` with :mod:`wcnerf.eval.table` and :mod:`wcnerf.eval.plots` -
  ``results.csv``, ``table.md``, ``curves.png``, ``renders/`` (on :mod:`wcnerf.report`);
* :mod:`wcnerf.eval.cli` - the command line (``main``).
"""
