"""The TF Serving warmup file: one small request per signature, replayed by the server at load.

`<version>/assets.extra/tf_serving_warmup_requests` holds serialized PredictionLog records.
"""

import os
from typing import Dict

import numpy as np
import tensorflow as tf

from fcn8s_tf.protobuf import length_delimited
from fcn8s_tf.serving.contract import (BYTES_INPUT, METADATA_INPUT, SIGNATURE_DEFAULT,
                                       SIGNATURE_METADATA, SIGNATURE_PROBABILITIES,
                                       SIGNATURE_UINT8, UINT8_INPUT)

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


WARMUP_IMAGE_SIZE = (64, 64)


def prediction_log(model_name: str, signature_name: str, inputs: Dict[str, np.ndarray]) -> bytes:
    """A serialized tensorflow.serving.PredictionLog holding one PredictRequest.

    Written by hand (six fields of protobuf wire format, fcn8s_tf/protobuf.py) because the generated
    classes come with `tensorflow-serving-api`, which depends on the full `tensorflow` distribution
    and would install a second TensorFlow beside tensorflow-cpu. Field numbers, from
    tensorflow_serving/apis/*.proto: PredictionLog.predict_log = 6; PredictLog.request = 1;
    PredictRequest.model_spec = 1, .inputs = 2 (map<string, TensorProto>: entry key = 1, value = 2);
    ModelSpec.name = 1, .signature_name = 3. tests/test_serving.py parses the file back with the
    generated classes.
    """
    spec = length_delimited(1, model_name.encode()) + length_delimited(3, signature_name.encode())
    request = length_delimited(1, spec)
    for key in sorted(inputs):
        tensor = tf.make_tensor_proto(inputs[key]).SerializeToString()
        request += length_delimited(2, length_delimited(1, key.encode())
                                    + length_delimited(2, tensor))
    return length_delimited(6, length_delimited(1, request))


def warmup_requests(model_name: str = "fcn8s") -> Dict[str, bytes]:
    """One small request per signature: a mid-grey 64x64 image, as JPEG bytes or uint8 pixels."""
    pixels = np.full((1, *WARMUP_IMAGE_SIZE, 3), 128, np.uint8)
    jpeg = tf.io.encode_jpeg(pixels[0]).numpy()
    return {
        SIGNATURE_METADATA: prediction_log(
            model_name, SIGNATURE_METADATA, {METADATA_INPUT: np.array(0, np.int32)}),
        SIGNATURE_DEFAULT: prediction_log(
            model_name, SIGNATURE_DEFAULT, {BYTES_INPUT: np.array([jpeg], dtype=object)}),
        SIGNATURE_PROBABILITIES: prediction_log(
            model_name, SIGNATURE_PROBABILITIES, {BYTES_INPUT: np.array([jpeg], dtype=object)}),
        SIGNATURE_UINT8: prediction_log(model_name, SIGNATURE_UINT8, {UINT8_INPUT: pixels}),
    }


def write_warmup_file(saved_model_dir: str, model_name: str = "fcn8s") -> str:
    """Writes `<saved_model_dir>/assets.extra/tf_serving_warmup_requests`; returns its path."""
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for record in warmup_requests(model_name).values():
            writer.write(record)
    return path


