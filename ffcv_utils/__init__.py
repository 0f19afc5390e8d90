"""Reusable parts of the FFCV ImageNet toolkit: the scripts at the top level stay thin."""
from .base.numba_cache import cache_ffcv_import_code

cache_ffcv_import_code()  # before any module of the package imports ffcv
