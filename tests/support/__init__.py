"""What the test modules share, each piece defined once (test modules import from here or get
fixtures from conftest.py, never from each other):

- :mod:`support.tiers`: the test tiers (markers, order) and the ``e2e`` guard;
- :mod:`support.helpers`: where the repository, its commands and the LLFF scenes are; offline
  subprocess environments; tensorboard scalars; config differences;
- :mod:`support.tiny`: the tiny presets (config, ``ns-train`` arguments, protocol YAML), the tiny
  scene and tiny trained runs;
- :mod:`support.broken_scenes`: the catalogue of broken LLFF scenes;
- :mod:`support.nerf_models`: tiny E-NeRF models on random rays, training steps with callbacks;
- :mod:`support.ns_server`: ``subprocess.run`` of nerfstudio's and wcnerf's command lines in
  forked children of one interpreter that imported nerfstudio once (per test process);
- :mod:`support.ns_cases`: a batch of ``ns-train`` / ``ns-eval`` command lines in one interpreter,
  with code run in each child (kills at chosen points);
- :mod:`support.fake_runner`, :mod:`support.browser`, :mod:`support.llff_reference`: the
  harness's fake runner, headless Chromium, the reference LLFF pose code.
"""
