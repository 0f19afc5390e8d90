"""Reusable parts of the FFCV ImageNet toolkit: the scripts at the top level stay thin."""
