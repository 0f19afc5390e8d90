"""Numba code kept in numba's on-disk cache: each process after the first (trainer processes,
torchrun ranks, scripts) loads it instead of compiling it again."""
from __future__ import annotations


def on_disk(dispatcher):
    """``dispatcher`` with numba's on-disk cache, as ``@njit(cache=True)`` gives it, where a cache
    folder is writable. Where none is (a read-only install and no writable home), ``cache=True``
    fails the import; this just leaves each process to compile the code again."""
    try:
        dispatcher.enable_caching()
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        pass
    return dispatcher


def cache_ffcv_import_code() -> None:
    """Importing ffcv fills a numba typed ``Dict`` (its image modes), which compiles numba's dict
    code afresh in every new process: about 2 s of CPU before each process starts."""
    from numba.typed import typeddict

    on_disk(typeddict._make_dict)
    on_disk(typeddict._setitem)
