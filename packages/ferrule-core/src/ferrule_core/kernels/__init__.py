"""Kernels the core ships: the pure-torch reference linear kernel."""
