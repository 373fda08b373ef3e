"""What a weights file holds, whatever its format: layers of named blobs in Caffe's layouts.

Both readers (caffemodel.py, npz.py) first declare what a file holds (layer names and types, blob
shapes) and hand that to a `check` before any array is read. The import's (fcn8s_map.check_fcn8s)
lets through only FCN-8s's layers at FCN-8s's shapes, so memory is bounded by the real net's size,
not by what a file claims.
"""


import dataclasses
import os
from typing import Callable, List, Optional, Tuple

import numpy as np


class WeightsError(ValueError):
    """A weights file that cannot be read, or that does not hold an FCN-8s; the message says why."""


@dataclasses.dataclass(frozen=True)
class DeclaredBlob:
    """A blob as its file declares it, before any of its values is read.

    read_weights hands a net of these to its `check`, so that names and shapes are judged before
    memory is spent: what a file declares is not what it costs (an .npz member may inflate a
    thousandfold, and a caffemodel layer FCN-8s does not have is never needed).

    Attributes:
      shape: the declared shape (Caffe's layout).
      read: returns the values, float32, in that shape.
    """
    shape: Tuple[int, ...]
    read: Callable[[], np.ndarray]


@dataclasses.dataclass
class Layer:
    """One layer of a weights file.

    Attributes:
      name: the layer name ("conv1_1").
      type: Caffe's type name ("Convolution"); "" where the file does not say (npz).
      blobs: its parameter arrays, float32, in the shape the file declares (Caffe layouts); while
        read_weights's `check` runs, DeclaredBlobs (shapes only) in their place.
      group: convolution_param.group (1 unless the file says otherwise).
    """
    name: str
    type: str
    blobs: list
    group: int = 1


@dataclasses.dataclass
class WeightsFile:
    """What a weights file holds: its format in words, the net's name, and its layers in order."""
    path: str
    format: str
    layers: List[Layer]
    net_name: str = ""


def check_readable(path: str) -> None:
    """Raises, in one line naming `path`, unless it is a file this process can read.

    Raises:
      FileNotFoundError: no such file. WeightsError: a folder, or not readable (permissions).
    """
    if os.path.isdir(path):
        raise WeightsError(f"{path} is a folder; expected a .caffemodel or .npz file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise WeightsError(f"{path} cannot be read: {e.strerror}") from None


def read_checked(net: WeightsFile, check: Optional[Callable[[WeightsFile], None]]) -> None:
    """Runs `check` on the declared net, then reads each DeclaredBlob's values in its place."""
    if check is not None:
        check(net)
    for layer in net.layers:
        layer.blobs = [blob.read() for blob in layer.blobs]
