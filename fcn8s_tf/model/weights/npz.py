"""A numpy .npz of FCN-8s weights, as the Chainer and PyTorch ports of FCN-8s write them.

Read with `np.load(allow_pickle=False)`: nothing in the file is executed. Keys in one of two
conventions:
    Chainer (wkentaro/fcn's fcn8s_from_caffe.npz):  conv1_1/W, conv1_1/b, upscore2/W
    PyTorch state_dict (wkentaro/pytorch-fcn):      conv1_1.weight, conv1_1.bias
with the Caffe layer names (conv1_1 ... conv5_3, fc6, fc7, score_fr, upscore2, score_pool4,
upscore_pool4, score_pool3, upscore8) and Caffe's array layouts (both ports use them). Optional
scale_pool4/W and scale_pool3/W (or .weight) carry the skip scales; those ports apply the at-once
net's 0.01/0.0001 in code, so an .npz without them needs the scales from the user (`skip_scales`).
To write one from pytorch-fcn:
    np.savez("fcn8s.npz", **{k: v.numpy() for k, v in model.state_dict().items()})

Members are sized from their .npy headers before any is inflated: an .npz member may inflate a
thousandfold, so an archive declaring more than 4x its size is refused outright.
"""


import functools
import math
import os
import zipfile
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from fcn8s_tf.model.weights.layers import (DeclaredBlob, Layer, WeightsError, WeightsFile,
                                           read_checked)


# ------------------------------------------------------------------------------------ npz --
# Key suffixes of (weight, bias) per convention; the prefix is the Caffe layer name.
NPZ_KEY_STYLES = {"Chainer": ("/W", "/b"), "PyTorch": (".weight", ".bias")}
_NPY_VERSIONS = ((1, 0), (2, 0))
# Deflate cannot expand data by more than ~1032x: a larger declared size is a lie (zip bomb).
_MAX_DEFLATE_RATIO = 1032
# Trained float32 weights are noise to deflate (it saves 7% on them, 40% on a net half zeros), so
# an archive that declares more than 4x its size holds mostly constants, not trained weights: a
# 2 MB file of zeros that declares 2 GiB is refused before a byte of it is inflated.
_MAX_NPZ_EXPANSION = 4


def _npz_shapes(path: str) -> Dict[str, Tuple[int, ...]]:
    """Every member's array shape (key -> shape) from its .npy header, only the headers inflated.

    Raises:
      WeightsError: a member that is not a float .npy, or whose declared sizes the archive
        cannot hold or that add up to more than _MAX_NPZ_EXPANSION times the archive.
    """
    file_size = os.path.getsize(path)
    shapes, total = {}, 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            where = f"{path}: member {info.filename!r}"
            if not info.filename.endswith(".npy"):
                raise WeightsError(f"{where} is not a .npy array, so this is not a numpy .npz "
                                   "(a PyTorch .pt/.pth is a zip of pickles and is never "
                                   "unpickled here: save its state_dict with np.savez)")
            limit = (info.compress_size if info.compress_type == zipfile.ZIP_STORED
                     else _MAX_DEFLATE_RATIO * info.compress_size)
            if info.compress_size > file_size or info.file_size > limit:
                raise WeightsError(f"{where} declares {info.file_size} bytes, more than the "
                                   f"{file_size}-byte archive can hold")
            with archive.open(info) as f:
                try:
                    version = np.lib.format.read_magic(f)
                    if version not in _NPY_VERSIONS:
                        raise ValueError(f"unsupported .npy version {version}")
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(f)
                except ValueError as e:
                    raise WeightsError(f"{where}: not a readable .npy header ({e})") from None
                if dtype.hasobject or dtype.kind != "f":
                    raise WeightsError(f"{where} holds {dtype} values; weights must be floats "
                                       "(object arrays would need pickle, never used here)")
                declared = math.prod(shape) * dtype.itemsize
                if declared != info.file_size - f.tell():
                    raise WeightsError(f"{where} declares shape {shape} ({declared} bytes) but "
                                       f"holds {info.file_size - f.tell()} bytes")
            shapes[info.filename[:-len(".npy")]] = tuple(shape)
            total += declared
    if total > _MAX_NPZ_EXPANSION * file_size:
        raise WeightsError(f"{path} declares {total} bytes of arrays in {file_size} bytes "
                           f"({total / file_size:.0f}x): trained weights do not compress beyond "
                           f"{_MAX_NPZ_EXPANSION}x, so this is mostly constants, not an FCN-8s")
    return shapes


def read_npz(path: str, check: Optional[Callable[[WeightsFile], None]] = None) -> WeightsFile:
    """Reads an .npz of FCN-8s weights keyed as in the module docstring (Chainer or PyTorch).

    Args:
      path: the .npz file.
      check: called with the net as declared by the .npy headers (DeclaredBlobs) before any
        array is inflated; it raises to stop there (check_fcn8s). Arrays are then read one at a
        time and cast to float32.
    Raises:
      WeightsError: not a readable .npz of float arrays, keys in neither convention or mixed.
    """
    try:
        shapes = _npz_shapes(path)
        with np.load(path, allow_pickle=False) as archive:
            net = _npz_layers(path, shapes, archive)
            read_checked(net, check)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise WeightsError(f"{path} is not a readable .npz (truncated?): {e}") from None
    return net


def _npz_layers(path: str, shapes: Dict[str, Tuple[int, ...]], archive) -> WeightsFile:
    """The layers the keys name (DeclaredBlobs reading from the open `archive`)."""
    styles, unknown, layers = set(), [], {}
    for key in sorted(shapes):
        for style, suffixes in NPZ_KEY_STYLES.items():
            matched = [i for i, s in enumerate(suffixes) if key.endswith(s) and len(key) > len(s)]
            if matched:
                styles.add(style)
                name = key[:-len(suffixes[matched[0]])]
                layers.setdefault(name, {})[matched[0]] = DeclaredBlob(
                    shapes[key], functools.partial(_read_member, archive, key))
                break
        else:
            unknown.append(key)
    if unknown or len(styles) != 1:
        expected = " or ".join(f"<layer>{w}, <layer>{b}" for w, b in NPZ_KEY_STYLES.values())
        problem = (f"keys {unknown[:8]} fit neither convention" if unknown
                   else "it mixes both key conventions" if styles else "it is empty")
        more = " ..." if len(shapes) > 12 else ""
        raise WeightsError(f"{path}: {problem}; expected keys {expected} "
                           f"(keys found: {sorted(shapes)[:12]}{more})")
    style = styles.pop()
    result = []
    for name, parts in layers.items():
        if 0 not in parts:
            raise WeightsError(f"{path}: {name}{NPZ_KEY_STYLES[style][1]} has no "
                               f"{name}{NPZ_KEY_STYLES[style][0]}")
        result.append(Layer(name=name, type="", blobs=[parts[i] for i in sorted(parts)]))
    return WeightsFile(path=path, format=f"npz, {style} keys", layers=result)


def _read_member(archive, key: str) -> np.ndarray:
    """One array of an open np.load archive, as float32."""
    return archive[key].astype(np.float32, copy=False)
