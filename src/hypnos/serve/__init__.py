"""Serving: an OpenAI-compatible HTTP server (``hypnos serve``) over a batched generation engine.

``from hypnos.serve.app import run_server`` starts one in-process for tests and pipelines.
"""
