r"""`make bench`: fcn8s_tf measured on the machine it runs on, against that machine's matmul ceiling
and against a Caffe-faithful PyTorch FCN-8s, in one run.

    .venv/bin/python tools/benchmark.py --output=BENCHMARKS.md --json_output=benchmarks.json

What one run measures, each figure in a child process of its own (so peak resident memory is that
measurement's, and the Keras dtype policy, XLA's caches and the thread pools of one measurement
cannot leak into the next):

  ceiling    tf.matmul of n x n matrices (n = 1024, 2048, 4096), chained inside one tf.function,
             best call of any size, in float32 and bfloat16 (float16 too on a GPU), at the start
             and at the end of the run; the higher is the ceiling. Every model figure is also given
             as a fraction of it: a ratio taken in one run drifts less than absolute times.
  converter  fcn8s_tf.data.convert.convert end to end on the sample pairs copied under new ids to a
             few hundred images, and again on 30, which splits its time into a fixed and a per-image
             part that extrapolate to the 12,031 images of VOC 2012 + SBD.
  pipeline   input_pipeline.train_dataset (read, decode, resize, batch): images/s, CPU ms/image.
  augment    augment.augment_batch in a tf.function at each training batch size: ms per batch.
  flops      counted analytically from the model, cross-checked with TensorFlow's graph profiler.
  train      the real training step, training/step.py's make_train_step (on-device augmentation,
             forward, masked cross-entropy, gradients, Adam) per precision, XLA on/off,
             fixed/dynamic input and batch size (sweep.py decides which combinations).
  inference  the SavedModels of serving/export.py export_saved_model in float32 and, where bf16 is
             native, bfloat16, each loaded as TF Serving would in a child of its own, on a 500x375
             JPEG: serving_uint8 and serving_default, ms per image and the fraction of the ceiling
             of the dtype the export computes in.
  versus     the Keras model's 500x375 forward pass (XLA off and on, in the dtype of each export),
             and PyTorch's train step and forward on the same shapes (torch_fcn8s.py), float32
             and bf16 where the machine has native bf16; alternated with the TensorFlow children
             of the same run.
  targets    issue 19's goals (forward >= 80% and training step >= 75% of the ceiling of their
             dtype; >= 1.5x PyTorch's best where bf16 is native) and the earlier ones, each with
             how far off it is; and the XLA default (train and forward) the run supports for its
             machine class.

The sample images are the real VOC files given by --sample_voc_root, or else synthetic ones from
fcn8s_tf.data.demo_data at VOC sizes (data.py says how they are made); the report names which.

Modules: settings (what a run depends on), machine (CPU facts), data (sample images), flops,
protocol (child processes), host_tasks / tf_tasks / torch_tasks (what the children run),
torch_fcn8s (the PyTorch net), sweep (which training configurations, and which is faster),
versus (the PyTorch comparison), run (the run's order and budget), targets, report (Markdown).
Only tools/benchmark.py reads flags.
"""
