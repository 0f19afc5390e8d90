"""Builds the fast JPEG crop-decoder (ffcv_utils/load/csrc/fastjpeg.c) next to the package.

Metadata lives in pyproject.toml; this file only declares the C extension. It is a plain shared
library loaded with ctypes (like ffcv's own libffcv), so it needs no Python headers at run time.
``pip install -e .`` (``make install``) builds it in place; ``python setup.py build_ext --inplace``
rebuilds it after editing the C source.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "ffcv_utils.load._fastjpeg",
    sources=["ffcv_utils/load/csrc/fastjpeg.c"],
    libraries=["jpeg"],
    extra_compile_args=["-O3", "-std=c99", "-D_GNU_SOURCE", "-Wall", "-Wno-clobbered"],
)])
