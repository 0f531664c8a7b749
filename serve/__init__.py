"""The Ray Serve application of cryptopredict (``serve/app.py``) and its config (``serve/config.yaml``)."""
