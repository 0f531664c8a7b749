"""Monitoring: the prediction log, outcomes joined after the horizon, rolling quality, drift, alerts."""
