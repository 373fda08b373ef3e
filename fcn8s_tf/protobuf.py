"""The protobuf wire format, both ways: the one varint codec of the project.

Read by the Caffe importer (model/weights/caffemodel.py: a .caffemodel is a serialized
NetParameter, parsed here without protobuf or Caffe installed) and written by the serving warmup
file (serving/warmup.py: a PredictionLog, written without tensorflow-serving-api, which would pull
in a second TensorFlow).
Only what those two need: varints, length-delimited fields, and iterating a message's fields
without copying their payloads. Field numbers and meanings stay with the callers.
"""

from typing import Iterator, Tuple

# Wire types (https://protobuf.dev/programming-guides/encoding/). Groups (3, 4) are deprecated and
# never written by Caffe or TF Serving, so meeting one means the bytes are not what we expect.
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
MAX_VARINT_BYTES = 10


class WireError(Exception):
    """Malformed protobuf bytes; callers add the file's name and what was being read."""


def decode_varint(buf, pos: int, end: int) -> Tuple[int, int]:
    """Decodes one base-128 varint at buf[pos:end]; returns (value, position after it)."""
    result = shift = 0
    for _ in range(MAX_VARINT_BYTES):
        if pos >= end:
            raise WireError(f"a varint runs past the end of its message (byte {pos})")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise WireError(f"a varint longer than {MAX_VARINT_BYTES} bytes (ending at byte {pos})")


def fields(buf, start: int, end: int) -> Iterator[Tuple[int, int, object, int]]:
    """Yields (field number, wire type, value, byte offset) for each field of buf[start:end].

    value is the integer of a varint, else the (begin, stop) byte span of the payload: nothing is
    copied, so a 400 MB blob costs nothing until its array is materialised.
    """
    pos = start
    while pos < end:
        at = pos
        key, pos = decode_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {at}")
        if wire == VARINT:
            value, pos = decode_varint(buf, pos, end)
        elif wire in (LENGTH, FIXED64, FIXED32):
            if wire == LENGTH:
                size, pos = decode_varint(buf, pos, end)
            else:
                size = 8 if wire == FIXED64 else 4
            if size > end - pos:
                raise WireError(f"field {number} at byte {at} declares {size} bytes but only "
                                f"{end - pos} remain in its message (file truncated?)")
            value = (pos, pos + size)
            pos += size
        else:
            raise WireError(f"wire type {wire} (field {number}) at byte {at}, a group, which Caffe "
                            "never writes")
        yield number, wire, value, at


def encode_varint(value: int) -> bytes:
    """A non-negative integer as a base-128 varint."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): key, length, payload."""
    return encode_varint(number << 3 | LENGTH) + encode_varint(len(payload)) + payload
