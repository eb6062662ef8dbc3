"""Optimization passes: each module holds one technique and registers it (see registry.py)."""
