"""fcn8s_tf: FCN-8s semantic segmentation for PASCAL VOC in TensorFlow/Keras 3."""

__version__ = "0.1.0"
