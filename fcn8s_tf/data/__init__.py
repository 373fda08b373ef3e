"""The data side: records, the converter, the host pipeline, augmentation, synthetic data.

Each name lives in its own module; import it from there (nothing is re-exported here).
"""
