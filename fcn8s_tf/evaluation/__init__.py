"""Evaluation: the metric and the evaluation loop.

Each name lives in its own module; import it from there (nothing is re-exported here).
"""
