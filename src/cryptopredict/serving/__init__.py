"""Serving: request-time features from the lake, the registered ensemble split into member and fusion
steps, and the HTTP schemas shared by the Ray Serve app, the monitor and paper trading."""
