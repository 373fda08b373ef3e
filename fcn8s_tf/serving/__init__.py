"""Serving: the contract of an export.

Each name lives in its own module; import it from there (nothing is re-exported here).
"""
