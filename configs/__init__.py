"""Shipped as ``wcnerf.configs``: the comparison protocols (``protocols/*.yaml``).

Read with :func:`wcnerf.eval.protocols.protocols_dir` (``importlib.resources``), so an
installed wheel finds them as a checkout does.
"""
