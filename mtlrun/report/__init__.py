"""Comparison reports of runs and sweeps: tables (mean ± std over seeds, Δm%, ranks) and plots.

``mtlrun report PATH...`` (``mtlrun.report.cli``) and the end of every multirun (``mtlrun.callbacks``) use it.
"""
