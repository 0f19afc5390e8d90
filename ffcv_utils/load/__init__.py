"""The loader: ffcv Loaders with the training order, per-sample draws, the fast decoder, page reads, the watchdog and the memory check."""
