"""The model: FCN-8s on VGG16, and the importers of published weights.

Each name lives in its own module; import it from there (nothing is re-exported here).
"""
