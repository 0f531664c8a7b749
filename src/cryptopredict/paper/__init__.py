"""Paper trading: live candles → the Serve app → risk manager → simulated fills. Never sends orders.

``feed`` (closed bars over ccxt, order methods disabled), ``client`` (``POST /predict/batch``), ``ledger``
(SQLite, one transaction per bar), ``engine`` (the per-bar loop), ``command`` (``cryptopredict paper``).
"""
