"""Reusable parts of the FFCV ImageNet toolkit: the scripts at the top level stay thin."""


def _cache_numba_dict_code() -> None:
    """Importing ffcv fills a numba typed ``Dict`` (its image modes), which compiles numba's dict
    code afresh in every new process: about 2 s of CPU before each trainer, torchrun rank or
    script starts. Numba can keep those compiled functions on disk as it does for its
    ``cache=True`` functions; later processes then load them instead. Where no cache folder is
    writable numba refuses, and the import just stays as slow as before."""
    from numba.typed import typeddict

    for dispatcher in (typeddict._make_dict, typeddict._setitem):
        try:
            dispatcher.enable_caching()
        except RuntimeError:  # no writable cache location
            return


_cache_numba_dict_code()
