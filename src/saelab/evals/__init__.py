"""Evaluations: one module each, with a typed config, a typed result and a ``run`` function."""
