"""Serving: the decode loop and its input checks (generate.py), how a forward pass runs (backends.py,
csrc/decode.cpp), continuous batching (engine.py), the server process (server.py, cpus.py), the OpenAI-style HTTP API
(http_api.py).
"""
