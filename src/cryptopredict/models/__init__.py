"""Forecasters: the baselines and the deep ensemble, all behind one interface (``base.Forecaster``)."""
