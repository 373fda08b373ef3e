"""fcn8s_tf/protobuf.py: the wire format both ways, checked against the protobuf runtime's bytes.

The Caffe reader (tests/test_import_weights.py) and the warmup writer (tests/test_serving.py) test
it through their messages; these are the codec's own cases.
"""

import pytest
from tensorflow.core.example import example_pb2
from tensorflow.core.example import feature_pb2

from fcn8s_tf import protobuf


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2 ** 32, 2 ** 63, 2 ** 64 - 1])
def test_varint_round_trip(value):
    encoded = protobuf.encode_varint(value)
    assert len(encoded) <= protobuf.MAX_VARINT_BYTES
    assert protobuf.decode_varint(encoded, 0, len(encoded)) == (value, len(encoded))


def test_varint_bytes_are_the_runtimes():
    example = example_pb2.Example()
    example.features.feature["n"].int64_list.value.append(300)
    assert b"\xac\x02" in example.SerializeToString()  # 300, as in the protobuf docs
    assert protobuf.encode_varint(300) == b"\xac\x02"


def test_a_varint_cut_short_or_too_long_is_an_error():
    with pytest.raises(protobuf.WireError):
        protobuf.decode_varint(b"\xac", 0, 1)  # continuation bit set, no next byte
    with pytest.raises(protobuf.WireError):
        protobuf.decode_varint(b"\xff" * 11, 0, 11)  # longer than any 64-bit value


def test_fields_of_a_runtime_written_message_without_copying_payloads():
    example = example_pb2.Example()
    example.features.feature["image"].bytes_list.value.append(b"x" * 1000)
    data = example.SerializeToString()
    ((number, wire, span, at),) = list(protobuf.fields(data, 0, len(data)))
    assert (number, wire, at) == (1, protobuf.LENGTH, 0)  # Example.features
    begin, stop = span
    assert stop == len(data) and data[begin:stop] == example.features.SerializeToString()


def test_length_delimited_is_what_the_runtime_parses():
    inner = feature_pb2.Features()
    inner.feature["label"].int64_list.value.extend([1, 2, 3])
    written = protobuf.length_delimited(1, inner.SerializeToString())  # Example.features
    parsed = example_pb2.Example.FromString(written)
    assert list(parsed.features.feature["label"].int64_list.value) == [1, 2, 3]


def test_a_field_longer_than_its_message_names_the_field():
    data = protobuf.length_delimited(1, b"abcdef")[:-2]  # declares 6 bytes, holds 4
    with pytest.raises(protobuf.WireError, match="field 1 at byte 0 declares 6 bytes but only 4"):
        list(protobuf.fields(data, 0, len(data)))
