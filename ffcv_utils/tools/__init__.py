"""Tools around a run or a beton: predict, export, inspect, plots, sample data."""
