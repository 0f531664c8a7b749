"""Honest evaluation: purged walk-forward splits, metrics, significance tests, backtests, canaries, report."""
