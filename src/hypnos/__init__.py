"""Hypnos: turn a general LLM into a Chinese medical specialist."""

import os

# OpenMP workers that spin while waiting collapse when cores are shared (a server, a trainer and a
# client on 2 cores): one SmolLM2 decode step went from 44 ms to 0.4-6 s. Passive waiting costs
# little when the cores are free. It only takes effect if set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
