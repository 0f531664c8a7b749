"""Feature engineering: technical, fractal, cross-asset, context (as-of joins) and sentiment families."""
