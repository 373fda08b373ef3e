"""Published FCN-8s weights, read without Caffe: one reader per file format, then the FCN-8s map.

layers.py (what any weights file holds) <- caffemodel.py, npz.py (one per format) <- fcn8s_map.py
(read_weights, the Caffe -> Keras mapping, the Keras model). Writing a run directory from them is
training's (fcn8s_tf/training/imported_run.py). Nothing is re-exported here.
"""
