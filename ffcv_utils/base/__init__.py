"""Shared plumbing every stage may use: the command line (UserError, run_main, the strict parser), atomic files, child processes, distributed set-up, numba caches."""
