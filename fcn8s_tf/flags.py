"""Every flag of `python -m fcn8s_tf.train`, in one place.

Only `train.main()` reads them; the library functions take a `TrainConfig`. Named runs live in
`configs/*.flags` and are passed with `--flagfile`.
"""

from absl import flags

# --- data -----------------------------------------------------------------------------------------
flags.DEFINE_string("train_data", None, "File pattern of the training TFRecords "
                    "(e.g. data/tfrecords/train-*.tfrecord).", required=True)
flags.DEFINE_string("val_data", None, "File pattern of the validation TFRecords; empty: no eval.")
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard logs, flags, export.",
                    required=True)
flags.DEFINE_integer("base_size", 321, "Host pipeline resizes every training image to this square "
                     "size (image bilinear, label nearest) before batching.", lower_bound=1)
flags.DEFINE_integer("crop_size", 321, "Side of the square crop the model trains on, taken after "
                     "random scaling on the accelerator.", lower_bound=1)
flags.DEFINE_list("scale_range", ["0.5", "1.3"], "Random scale range min,max of the augmentation.")
flags.DEFINE_float("flip_prob", 0.5, "Probability of a horizontal flip.", lower_bound=0.0,
                   upper_bound=1.0)
flags.DEFINE_integer("shuffle_buffer", 1000, "Examples in the training shuffle buffer.",
                     lower_bound=1)

# --- model ----------------------------------------------------------------------------------------
flags.DEFINE_integer("num_classes", 21, "Classes including background.", lower_bound=2)
flags.DEFINE_string("backbone_weights", "imagenet", "'imagenet' (Keras's VGG16 download with the "
                    "top, for the fc6/fc7 net surgery), 'none' (random init), or a path to a local "
                    "VGG16 .h5 weights file.")
flags.DEFINE_string("init_from", None, "Start from the model weights (not the optimizer) of a "
                    "workdir or checkpoint, e.g. the published FCN-8s from "
                    "tools/import_weights.py. Ignored when --workdir has a checkpoint to resume.")
flags.DEFINE_integer("fc_units", 4096, "Width of fc6/fc7. The paper's 4096; narrower only for the "
                     "demo or tests.", lower_bound=1)
flags.DEFINE_bool("learnable_upsampling", False, "Train the transposed convolutions (the Caffe "
                  "reference keeps them fixed bilinear).")
flags.DEFINE_list("skip_scales", ["0.01", "0.0001"], "pool4,pool3 scale factors before their score "
                  "layers. The reference's 0.01,0.0001; the CPU demo alone uses 1,1.")
flags.DEFINE_bool("train_backbone", True, "Train the VGG16 conv blocks. Off only in the CPU demo "
                  "(random-init features, frozen to fit its time budget).")
flags.DEFINE_bool("fixed_input_shape", True, "Build the training model for the crop size (measured "
                  "faster than (None, None) by make bench); evaluation and export use an "
                  "any-size twin.")
flags.DEFINE_float("dropout_rate", 0.5, "Dropout after fc6 and fc7.", lower_bound=0.0,
                   upper_bound=1.0)

# --- optimisation ---------------------------------------------------------------------------------
flags.DEFINE_integer("train_steps", 0, "Optimizer steps; 0 means use --epochs.", lower_bound=0)
flags.DEFINE_float("epochs", 0.0, "Epochs over the training records (from manifest.json, or by "
                   "counting), used when --train_steps is 0.", lower_bound=0.0)
flags.DEFINE_integer("batch_size", 8, "Global batch size, split evenly over the replicas.",
                     lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-5, "Peak learning rate of Adam.", lower_bound=0.0)
flags.DEFINE_enum("lr_schedule", "constant", ["constant", "poly", "cosine"],
                  "Decay after warm-up: constant, poly (power 0.9, as DeepLab) or cosine.")
flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up steps.", lower_bound=0)
flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay of Adam (AdamW style); 0 = off.",
                   lower_bound=0.0)
flags.DEFINE_float("adam_beta1", 0.9, "Adam beta_1.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("adam_beta2", 0.999, "Adam beta_2.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("adam_epsilon", 1e-8, "Adam epsilon.", lower_bound=0.0)
flags.DEFINE_bool("amsgrad", False, "AMSGrad variant of Adam (as the course report's algorithm).")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"],
                  "Keras mixed-precision policy. mixed_float16 adds dynamic loss scaling.")
flags.DEFINE_bool("xla", False, "jit-compile the per-replica model step (forward, loss, gradient). "
                  "Off by default: not faster on the CPUs measured (BUILD.md).")
flags.DEFINE_integer("seed", 0, "Seeds weights init, data order and augmentation.")

# --- bookkeeping ----------------------------------------------------------------------------------
flags.DEFINE_integer("log_every", 20, "Steps between progress lines and TensorBoard scalars.",
                     lower_bound=1)
flags.DEFINE_integer("checkpoint_every", 1000, "Steps between checkpoints.", lower_bound=1)
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept (the newest ones).", lower_bound=1)
flags.DEFINE_integer("eval_every", 2000, "Steps between validation runs; 0 = only at the end.",
                     lower_bound=0)
flags.DEFINE_integer("eval_max_images", 0, "Validate on the first N images only; 0 = all.",
                     lower_bound=0)
flags.DEFINE_integer("tb_images", 3, "Fixed validation images shown in TensorBoard.",
                     lower_bound=0)
flags.DEFINE_bool("export", True, "Export a SavedModel to <workdir>/export/<version> at the end.")
