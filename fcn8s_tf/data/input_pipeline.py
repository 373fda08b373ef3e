"""Host input pipeline: TFRecord shards -> decoded, resized, batched (images, labels).

The host only reads, decodes, resizes to a fixed base size and batches (docs/DESIGN.md); the random
scale/flip/crop and the mean subtraction run on the accelerator (fcn8s_tf/data/augment.py). The
record format is owned by fcn8s_tf/data/records.py, so this module never names a feature key.

Training batches are uint8: resizing gives float32, which is rounded back to uint8 (at most 0.5 of a
grey level, well below JPEG's own error) so that the prefetch buffers and the host->device copy
carry 1 byte per channel instead of 4.

Usage with a distribution strategy:

    dataset_fn = input_pipeline.train_dataset_fn(pattern, global_batch_size=16, seed=0,
                                                 num_classes=21)
    dist_dataset = strategy.distribute_datasets_from_function(dataset_fn)
    with input_pipeline.data_errors_named(pattern):
        for batch in dist_dataset: ...

Broken data is named, in one line (records.DataError), never a page of tf.data traceback:
- a truncated or overwritten file, when the dataset is built (records.list_files walks the framing
  of every file);
- a record whose data fails its checksum, when tf.data meets it: data_errors_named turns the
  DataLossError (which does not say which file) into the file and record, found by reading the
  files once more;
- label values outside [0, num_classes) and 255, when the record is decoded (given num_classes):
  an assertion whose message names the shard, the record index and image/filename, which
  data_errors_named turns into that one line.
"""

import contextlib
import re
from typing import Callable, Iterator, Optional, Sequence, Tuple

import tensorflow as tf

from fcn8s_tf.class_info import IGNORE_LABEL
from fcn8s_tf.data import records

DEFAULT_BASE_SIZE = (321, 321)
DEFAULT_SHUFFLE_BUFFER = 1024  # serialized records (~0.1 MB each for VOC): ~100 MB of host memory
_MAX_OPEN_FILES = 16  # files read at once by the interleave
_MAX_BAD_VALUES_SHOWN = 5

# The owner is records.list_files; training and evaluation call it by this name.
list_files = records.list_files


def _nearest_indices(size_in: tf.Tensor, size_out: int) -> tf.Tensor:
    """Source index of each output index under nearest resizing with half-pixel centres."""
    centres = tf.range(size_out, dtype=tf.float32) + 0.5
    index = tf.floor(centres * tf.cast(size_in, tf.float32) / size_out)
    return tf.minimum(tf.cast(index, tf.int32), size_in - 1)


def resize_label(label: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
    """Nearest-neighbour resize of a (H, W, 1) label to (h, w, 1), same dtype and values.

    Gives the same pixels as tf.image.resize(..., NEAREST_NEIGHBOR) (half-pixel centres) at a sixth
    of the CPU time: that kernel costs ~1 ms for a 500x375 label, while gathering whole rows, then
    (after a transpose) whole columns, costs ~0.16 ms.
    """
    shape = tf.shape(label)
    rows = tf.gather(label[:, :, 0], _nearest_indices(shape[0], size[0]), axis=0)
    columns = tf.gather(tf.transpose(rows), _nearest_indices(shape[1], size[1]), axis=0)
    return tf.transpose(columns)[:, :, None]


def resize_image(image: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
    """Bilinear resize (half-pixel centres) of a (H, W, 3) uint8 image, rounded back to uint8.

    Cast to float first: the bilinear kernel on float input is about twice as fast as on uint8
    (0.43 vs 0.93 ms for 500x375 -> 321x321), with the same result.
    """
    resized = tf.image.resize(tf.cast(image, tf.float32), size,
                              method=tf.image.ResizeMethod.BILINEAR)
    # Bilinear weights are convex, so values stay in [0, 255]: +0.5 and truncation round.
    return tf.cast(resized + 0.5, tf.uint8)


# ----------------------------------------------------------------------------------------------
# Reading: every record carries where it came from, so a bad one can be named.
# ----------------------------------------------------------------------------------------------

def _records_with_origin(path: tf.Tensor) -> tf.data.Dataset:
    """One file's records as (serialized, path, index of the record in the file)."""
    return tf.data.TFRecordDataset(path).enumerate().map(
        lambda index, serialized: (serialized, path, index))


# Markers around the message of a failed label check, so that data_errors_named can tell it from
# other InvalidArgumentErrors and cut it out of TensorFlow's wrapping.
_MESSAGE_START, _MESSAGE_END = "<fcn8s_tf.DataError>", "</fcn8s_tf.DataError>"
_MESSAGE = re.compile(re.escape(_MESSAGE_START) + "(.*?)" + re.escape(_MESSAGE_END), re.DOTALL)


def check_label_values(label: tf.Tensor, num_classes: int, path: tf.Tensor, index: tf.Tensor,
                       filename: tf.Tensor) -> tf.Tensor:
    """Returns label unchanged once every value is in [0, num_classes) or IGNORE_LABEL.

    Graph-safe (tf.data maps); the message is built only when the check fails.

    Args:
      label: uint8 (H, W, 1) class indices.
      num_classes: C.
      path, index, filename: the shard, the record's index in it and its image/filename, for the
        message.
    Returns:
      label, with the check as a control dependency.
    Raises:
      tf.errors.InvalidArgumentError (when evaluated): the message names path, index and filename
        and shows the first few bad values; data_errors_named turns it into records.DataError.
      ValueError: label is not uint8, or num_classes is not in 1..255.
    """
    if label.dtype != tf.uint8 or not 1 <= num_classes <= IGNORE_LABEL:
        raise ValueError(f"uint8 labels and 1 <= num_classes <= {IGNORE_LABEL}; got "
                         f"{label.dtype.name} and {num_classes}")

    def fail():
        valid = (label < num_classes) | tf.equal(label, IGNORE_LABEL)
        bad, _ = tf.unique(tf.boolean_mask(label, tf.logical_not(valid)))
        bad = tf.sort(tf.cast(bad, tf.int32))[:_MAX_BAD_VALUES_SHOWN]
        message = tf.strings.join([
            _MESSAGE_START, path, ": record ", tf.strings.as_string(index), " (image/filename ",
            filename, "): label values ", tf.strings.format("{}", bad, summarize=-1),
            f" outside 0..{num_classes - 1} and {IGNORE_LABEL} (is --num_classes={num_classes} "
            "right for these records?)", _MESSAGE_END])
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.constant(False)

    # uint8 addition wraps, so IGNORE_LABEL (255) + 1 is 0: every value is valid exactly when
    # max(label + 1) <= num_classes. A third of the time of the two comparisons and a reduce_all
    # (0.26 vs 0.84 ms for 500x375).
    all_valid = tf.reduce_max(label + 1) <= num_classes
    checked = tf.cond(all_valid, lambda: tf.constant(True), fail)
    with tf.control_dependencies([checked]):
        return tf.identity(label)


def _decode(serialized: tf.Tensor, path: tf.Tensor, index: tf.Tensor,
            num_classes: Optional[int]):
    """One record -> (image uint8 (H, W, 3), label uint8 (H, W, 1), filename), labels checked."""
    image, label, filename = records.decode_example(serialized)
    if num_classes is not None:
        label = check_label_values(label, num_classes, path, index, filename)
    return image, label, filename


def _decode_and_resize(serialized: tf.Tensor, path: tf.Tensor, index: tf.Tensor,
                       base_size: Tuple[int, int], num_classes: Optional[int]):
    """One record -> (image uint8 (h, w, 3), label uint8 (h, w, 1)) at base_size."""
    # Labels are checked at full resolution: nearest resizing could drop a bad pixel.
    image, label, _ = _decode(serialized, path, index, num_classes)
    image = tf.ensure_shape(resize_image(image, base_size), [base_size[0], base_size[1], 3])
    label = tf.ensure_shape(resize_label(label, base_size), [base_size[0], base_size[1], 1])
    return image, label


def describe_data_error(error: tf.errors.OpError, file_patterns: Sequence[str]) -> Optional[str]:
    """One line naming the file (and record) behind an error met while iterating, or None.

    Args:
      error: what iterating a dataset of this module raised.
      file_patterns: the patterns that dataset (or datasets) read.
    Returns:
      For a failed label check: its message. For a tf.errors.DataLossError from the TFRecord
      reader: the first broken file and record (records.find_broken_record reads every file of
      the patterns once). None for any other error (not a data error of ours: re-raise it).
    """
    if isinstance(error, tf.errors.InvalidArgumentError):
        match = _MESSAGE.search(error.message or "")
        return match.group(1) if match else None
    if isinstance(error, tf.errors.DataLossError) and "record at" in (error.message or ""):
        files = []
        for pattern in file_patterns:
            try:
                files += records.list_files(pattern, check=False)
            except FileNotFoundError:
                pass
        return records.find_broken_record(files)
    return None


@contextlib.contextmanager
def data_errors_named(*file_patterns: str) -> Iterator[None]:
    """Inside the block, a broken record of these patterns raises records.DataError (one line).

    Wrap the loop that iterates the datasets (training steps, evaluation), with every pattern
    those datasets read:

        with input_pipeline.data_errors_named(train_pattern, val_pattern):
            ...

    Other errors pass through unchanged.
    """
    try:
        yield
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
        message = describe_data_error(e, file_patterns)
        if message is None:
            raise
        raise records.DataError(message) from None


def _options(deterministic: bool, input_context: Optional[tf.distribute.InputContext]):
    options = tf.data.Options()
    options.deterministic = deterministic
    # Parallelism comes from mapping many records at once; letting each resize also split itself
    # across threads cost ~10-40% more CPU per image here (thread hand-offs and spinning).
    options.threading.max_intra_op_parallelism = 1
    if input_context is not None:
        # Sharded here already; stop tf.distribute from sharding again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def train_dataset(file_pattern: str, batch_size: int,
                  base_size: Tuple[int, int] = DEFAULT_BASE_SIZE, seed: Optional[int] = None,
                  input_context: Optional[tf.distribute.InputContext] = None,
                  shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                  deterministic: bool = True,
                  num_classes: Optional[int] = None) -> tf.data.Dataset:
    """Infinite, shuffled training batches at base size, not yet augmented.

    Sharding across input pipelines (input_context.num_input_pipelines > 1): by file when there are
    at least as many files as pipelines (pipeline i reads files i, i + n, ...), else by record
    (every pipeline reads all files in the same fixed order and keeps records i, i + n, ...). Either
    way the pipelines see disjoint records.

    Determinism: with a seed and deterministic=True the element order is fixed (file order, record
    shuffle and the parallel interleave/map are all ordered). deterministic=False lets parallel
    stages emit out of order, which can help when records vary a lot in decode cost.

    Args:
      file_pattern: glob of the converter's shards, e.g. ".../train-*.tfrecord".
      batch_size: the GLOBAL batch size when input_context is given (this pipeline gets
        input_context.get_per_replica_batch_size(batch_size)), else the batch size.
      base_size: (h, w) every image and label is resized to (image bilinear, label nearest).
      seed: seed of the file and record shuffles.
      input_context: from strategy.distribute_datasets_from_function, or None for one pipeline.
      shuffle_buffer: records in the shuffle buffer (serialized, before decoding).
      deterministic: keep the element order fixed for a given seed.
      num_classes: C: every label value must be in [0, C) or 255 (check_label_values); None
        skips the check.
    Returns:
      A dataset of (images uint8 (b, h, w, 3) RGB 0-255, labels uint8 (b, h, w, 1)), with
      drop_remainder batches, repeated forever and prefetched. Iterating it raises
      tf.errors.InvalidArgumentError for a bad label value and tf.errors.DataLossError for a
      corrupt record: iterate inside data_errors_named(file_pattern) to get one line instead.
    Raises:
      FileNotFoundError: no file matches file_pattern.
      records.DataError: a file is truncated or corrupt, or its folder is mid-replacement.
    """
    files = list_files(file_pattern)
    base_size = (int(base_size[0]), int(base_size[1]))
    num_pipelines, pipeline_id = 1, 0
    if input_context is not None:
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
        batch_size = input_context.get_per_replica_batch_size(batch_size)

    if num_pipelines > 1 and len(files) < num_pipelines:
        # By record: a fixed sequential read order on every pipeline makes the shards disjoint.
        dataset = tf.data.Dataset.from_tensor_slices(files).flat_map(_records_with_origin)
        dataset = dataset.shard(num_pipelines, pipeline_id).repeat()
    else:
        files = files[pipeline_id::num_pipelines]
        dataset = tf.data.Dataset.from_tensor_slices(files)
        # Shuffling before repeat reshuffles the file order every epoch.
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
        dataset = dataset.interleave(
            _records_with_origin, cycle_length=min(len(files), _MAX_OPEN_FILES),
            block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    # Shuffle serialized records: cheaper to buffer than decoded images.
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(
        lambda record, path, index: _decode_and_resize(record, path, index, base_size,
                                                       num_classes),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset.with_options(_options(deterministic, input_context))


def train_dataset_fn(file_pattern: str, global_batch_size: int,
                     **kwargs) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """A dataset_fn for strategy.distribute_datasets_from_function (per-replica batches).

    kwargs go to train_dataset (pass num_classes to check the labels). The files are checked now
    (records.list_files), so a bad pattern or a truncated file fails before the strategy calls
    the function.
    """
    list_files(file_pattern)

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return train_dataset(file_pattern, global_batch_size, input_context=input_context,
                             **kwargs)

    return dataset_fn


def eval_dataset(file_pattern: str, batch: bool = False,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 num_classes: Optional[int] = None) -> tf.data.Dataset:
    """Evaluation examples at original resolution, in a fixed order, without augmentation.

    Files are read in sorted order, each front to back. With input_context, pipeline i keeps
    records i, i + n, ... (every record is seen by exactly one pipeline).

    Args:
      file_pattern: glob of the shards, e.g. ".../val-*.tfrecord".
      batch: add a leading batch dimension of 1 (sizes differ, so no larger batches).
      input_context: optional, to split the records across input pipelines.
      num_classes: C: every label value must be in [0, C) or 255 (check_label_values); None
        skips the check.
    Returns:
      A finite dataset of (image uint8 (H, W, 3) RGB, label uint8 (H, W, 1), filename string),
      with a leading 1 on each when batch=True. Iterate it inside data_errors_named(file_pattern)
      for one-line errors (see train_dataset).
    Raises:
      FileNotFoundError: no file matches file_pattern.
      records.DataError: a file is truncated or corrupt, or its folder is mid-replacement.
    """
    files = list_files(file_pattern)
    dataset = tf.data.Dataset.from_tensor_slices(files).flat_map(_records_with_origin)
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    dataset = dataset.map(lambda record, path, index: _decode(record, path, index, num_classes),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if batch:
        dataset = dataset.batch(1)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset.with_options(_options(True, input_context))
