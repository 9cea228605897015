"""Shipped as ``wcnerf.example_data``: the example scene (LLFF fern at factor 8) and mesh
(spot) that the commands use when given no data. See ``README.md`` in this folder for their
sources and licences; found by :func:`wcnerf.data.llff_scene.data_search_roots` and
:data:`wcnerf.shape.train.DEFAULT_MESH`.
"""
