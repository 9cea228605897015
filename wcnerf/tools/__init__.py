"""Tools for one finished nerfstudio run, each a command line (a tyro dataclass with ``main()``)
installed as a console script. ``RUN`` is the run folder nerfstudio wrote
(``outputs/<experiment>/<method>/<timestamp>/``) or its ``config.yml``; ``--load-config
RUN/config.yml`` (nerfstudio's spelling) works too.

* :mod:`wcnerf.tools.summary` - ``wcnerf-summary RUN``: held-out metrics (``ns-eval``), the
  held-out picture, the spiral path and the next commands (what ``scripts/train_enerf.py``
  prints after training);
* :mod:`wcnerf.tools.spiral` - ``wcnerf-spiral RUN``: the LLFF spiral camera path for
  ``ns-render camera-path`` (``scripts/llff_spiral.py``);
* :mod:`wcnerf.tools.heldout` - ``wcnerf-heldout RUN``: ground truth | render | error map of a
  held-out view;
* :mod:`wcnerf.tools.scaled_eval` - ``wcnerf-scaled-eval RUN --image-scale S``: held-out metrics
  with every view rendered at a fraction of its size;
* :mod:`wcnerf.tools.train_enerf` - the README's main job (``scripts/train_enerf.py``): train
  E-NeRF, then the summary;
* :mod:`wcnerf.tools.runs` - what they share: the ``RUN`` argument, the run's config and LLFF
  scene, ``ns-eval``.
"""
