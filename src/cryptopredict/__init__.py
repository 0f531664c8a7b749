"""cryptopredict: crypto direction/volatility prediction with honest, walk-forward evaluation on Ray."""

__version__ = "0.1.0"
