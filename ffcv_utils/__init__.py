"""Reusable parts of the FFCV ImageNet toolkit: the scripts at the top level stay thin.

The subpackages follow the pipeline, and each imports only from the ones before it
(tests/base/test_imports.py checks it): ``base`` (command line, strict parser, atomic files,
processes, distributed set-up) -> ``beton`` (the format: sidecar, header check) -> ``write``
(sources, images, packing, the writer) -> ``load`` (loaders, order, draws, the fast decoder) ->
``train`` (the trainer, its config, recipe pieces, logs) -> ``tools`` (predict, export, inspect,
plot, sample data). ``commands`` (the console scripts) may import any of them.
"""
from .base.numba_cache import cache_ffcv_import_code

cache_ffcv_import_code()  # before any module of the package imports ffcv
