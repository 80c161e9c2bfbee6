"""Serving: the OpenAI-compatible HTTP server (`run_mode: serve`) and the terminal chat (`run_mode: chat`)
on the continuous-batching engine (`torchformers.generation.engine`)."""

from torchformers.serve.app import APIError, ServeSettings, build_app

__all__ = ["APIError", "ServeSettings", "build_app"]
