"""Hypnos: turn a general LLM into a Chinese medical specialist."""
__version__ = "0.1.0"
