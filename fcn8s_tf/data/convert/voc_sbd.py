"""The PASCAL VOC 2012 + SBD source of the converter: ids, splits, and reading their files.

Splits (docs/DESIGN.md): train = (SBD train ∪ SBD val ∪ VOC2012 seg train) − VOC2012 seg val,
10,582 ids on the full data; val = VOC2012 seg val, 1,449 ids. Without an SBD root, train is VOC2012
seg train. With a list file (--list), only its ids, in one split (e.g. VOC2011 seg11valid, 736 ids).
A label comes from VOC `SegmentationClass/<id>.png` when it exists (it carries the 255 boundary
band), else from SBD `cls/<id>.mat`; the image from VOC `JPEGImages/<id>.jpg`, else from SBD
`img/<id>.jpg`.

Error messages name the flags (--voc_root, --sbd_root, --list) because that is where a user fixes
them. prepare_example runs in the worker processes: no TensorFlow here.
"""

import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from fcn8s_tf.class_info import IGNORE_LABEL, NUM_CLASSES, VOC_CLASSES, VOC_PALETTE
from fcn8s_tf.data.convert.examples import (Classes, Plan, PreparedExample, check_label_values,
                                            count_values, finish_example, label_histogram,
                                            read_id_list, read_jpeg)
from fcn8s_tf.data.convert.layout import ConversionError, check_split_name, format_names

PathLike = Union[str, os.PathLike]

SPLITS = ("train", "val")
VOC = Classes(VOC_CLASSES, tuple(tuple(int(c) for c in VOC_PALETTE[i])
                                 for i in range(NUM_CLASSES)))
_VOC_WHAT = "the VOCdevkit/VOC2012 folder, holding JPEGImages/, SegmentationClass/ and ImageSets/"
_SBD_WHAT = "SBD's benchmark_RELEASE/dataset folder, holding img/, cls/, train.txt and val.txt"


# ----------------------------------------------------------------------------------------------
# Splits: which ids go where, read from the datasets' own list files.
# ----------------------------------------------------------------------------------------------

def _voc_list(voc_root: Path, split: str) -> Path:
    return voc_root / "ImageSets" / "Segmentation" / f"{split}.txt"


def _sbd_list(sbd_root: Path, split: str) -> Path:
    return sbd_root / f"{split}.txt"


def _check_root(root: Path, flag: str, what: str) -> None:
    if not root.is_dir():
        raise ConversionError(
            f"{flag}={root}: the folder does not exist ({flag} should be {what}).")


def _check_roots(voc_root: Path, sbd_root: Optional[Path]) -> None:
    _check_root(voc_root, "--voc_root", _VOC_WHAT)
    if sbd_root is not None:
        _check_root(sbd_root, "--sbd_root", _SBD_WHAT)


def split_list_files(voc_root: PathLike,
                     sbd_root: Optional[PathLike] = None) -> Dict[str, Dict[str, List[Path]]]:
    """The list files each split is built from: {split: {"include": [...], "exclude": [...]}}.

    A split's ids are the union of its "include" lists minus the union of its "exclude" lists.
    """
    voc_root = Path(voc_root)
    train_include = [_voc_list(voc_root, "train")]
    if sbd_root is not None:
        sbd_root = Path(sbd_root)
        train_include = [_sbd_list(sbd_root, "train"), _sbd_list(sbd_root, "val")] + train_include
    return {
        "train": {"include": train_include, "exclude": [_voc_list(voc_root, "val")]},
        "val": {"include": [_voc_list(voc_root, "val")], "exclude": []},
    }


def split_ids(voc_root: PathLike, sbd_root: Optional[PathLike] = None) -> Dict[str, List[str]]:
    """Reads the list files and returns the sorted ids of each split; needs no image files.

    Args:
      voc_root: the VOCdevkit/VOC2012 folder (reads ImageSets/Segmentation/{train,val}.txt).
      sbd_root: SBD's benchmark_RELEASE/dataset folder (reads {train,val}.txt), or None.
    Returns:
      {"train": [...], "val": [...]}: 10,582 and 1,449 ids on the full VOC 2012 + SBD lists.
    Raises:
      ConversionError: a root or list file does not exist.
    """
    voc_root = Path(voc_root)
    sbd_root = Path(sbd_root) if sbd_root is not None else None
    _check_roots(voc_root, sbd_root)

    # Every list file once, with the flag that names its root in errors.
    owners = {_voc_list(voc_root, split): ("--voc_root", voc_root) for split in SPLITS}
    if sbd_root is not None:
        owners.update({_sbd_list(sbd_root, split): ("--sbd_root", sbd_root) for split in SPLITS})
    listed = {path: read_id_list(path, f" ({flag}={root}: is that the right folder?)")
              for path, (flag, root) in owners.items()}

    result = {}
    for split, lists in split_list_files(voc_root, sbd_root).items():
        ids = set()
        for path in lists["include"]:
            ids.update(listed[path])
        for path in lists["exclude"]:
            ids.difference_update(listed[path])
        result[split] = sorted(ids)
    return result


# ----------------------------------------------------------------------------------------------
# Planning: where each id's image and label come from, checked before anything is written.
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ExampleSource:
    """Where one example's files are; what a worker process receives."""
    example_id: str
    image_path: str
    image_source: str  # "voc" or "sbd"
    label_path: str
    label_source: str  # "voc" (SegmentationClass PNG) or "sbd" (cls .mat)


def _names(folder: Path) -> frozenset:
    """One directory listing per folder instead of a stat per id and folder."""
    return frozenset(os.listdir(folder)) if folder.is_dir() else frozenset()


def plan_split(split: str, ids: Sequence[str], voc_root: PathLike,
               sbd_root: Optional[PathLike] = None) -> List[ExampleSource]:
    """Finds every id's image and label files, applying the VOC-over-SBD precedence.

    Raises:
      ConversionError: some ids have no image or no label; says how many and shows the first few.
    """
    voc_root = Path(voc_root)
    sbd_root = Path(sbd_root) if sbd_root is not None else None
    voc_images, voc_labels = _names(voc_root / "JPEGImages"), _names(voc_root / "SegmentationClass")
    sbd_images = _names(sbd_root / "img") if sbd_root else frozenset()
    sbd_labels = _names(sbd_root / "cls") if sbd_root else frozenset()

    sources, no_image, no_label = [], [], []
    for example_id in ids:
        if f"{example_id}.jpg" in voc_images:
            image = (str(voc_root / "JPEGImages" / f"{example_id}.jpg"), "voc")
        elif f"{example_id}.jpg" in sbd_images:
            image = (str(sbd_root / "img" / f"{example_id}.jpg"), "sbd")
        else:
            image = None
            no_image.append(example_id)
        if f"{example_id}.png" in voc_labels:
            label = (str(voc_root / "SegmentationClass" / f"{example_id}.png"), "voc")
        elif f"{example_id}.mat" in sbd_labels:
            label = (str(sbd_root / "cls" / f"{example_id}.mat"), "sbd")
        else:
            label = None
            no_label.append(example_id)
        if image and label:
            sources.append(ExampleSource(example_id, image[0], image[1], label[0], label[1]))

    problems = []
    where_sbd = f" or img/<id>.jpg under --sbd_root={sbd_root}" if sbd_root else ""
    if no_image:
        problems.append(
            f"{len(no_image)} of {len(ids)} {split} ids have no image (looked for "
            f"JPEGImages/<id>.jpg under --voc_root={voc_root}{where_sbd}): "
            f"{format_names(no_image)}")
    where_sbd = f" or cls/<id>.mat under --sbd_root={sbd_root}" if sbd_root else ""
    if no_label:
        problems.append(
            f"{len(no_label)} of {len(ids)} {split} ids have no label (looked for "
            f"SegmentationClass/<id>.png under --voc_root={voc_root}{where_sbd}): "
            f"{format_names(no_label)}")
    if problems:
        raise ConversionError("\n".join(problems))
    return sources


def plan(voc_root: PathLike, sbd_root: Optional[PathLike] = None,
         list_file: Optional[PathLike] = None, list_split: str = "val") -> Plan:
    """The whole conversion of VOC (+ SBD): every split's files found, nothing read yet.

    Args:
      voc_root, sbd_root: as split_ids.
      list_file: convert only the ids it lists (one a line, VOC's format), into list_split;
        the VOC/SBD split lists are then not read.
      list_split: the split list_file's ids go to.
    Raises:
      ConversionError: a root or list file does not exist, a split is empty, ids lack files.
    """
    voc_root = Path(voc_root).absolute()
    sbd_root = Path(sbd_root).absolute() if sbd_root is not None else None
    if list_file is None:
        ids = split_ids(voc_root, sbd_root)
        lists = {split: {key: [str(p) for p in paths] for key, paths in files.items()}
                 for split, files in split_list_files(voc_root, sbd_root).items()}
    else:
        check_split_name(list_split, f"--list_split={list_split}")
        _check_roots(voc_root, sbd_root)
        list_file = Path(list_file).absolute()
        ids = {list_split: sorted(set(read_id_list(list_file, f" (--list={list_file})")))}
        lists = {list_split: {"include": [str(list_file)], "exclude": []}}
    for split, split_ids_ in ids.items():
        if not split_ids_:
            raise ConversionError(f"the {split} split is empty (list files: "
                                  f"{', '.join(lists[split]['include'])}).")
    splits = {split: plan_split(split, ids[split], voc_root, sbd_root) for split in ids}
    split_info = {split: {
        "label_source": {"voc": 0, "sbd": 0, **count_values([s.label_source for s in sources])},
        "image_source": {"voc": 0, "sbd": 0, **count_values([s.image_source for s in sources])},
        "list_files": lists[split],
    } for split, sources in splits.items()}
    created = {"source": "voc", "voc_root": str(voc_root),
               "sbd_root": str(sbd_root) if sbd_root else None}
    if list_file is not None:
        created["list"] = str(list_file)
    return Plan(splits, prepare_example, VOC, created, split_info)


# ----------------------------------------------------------------------------------------------
# One example: read, check, encode. Runs in the worker processes; no TensorFlow here.
# ----------------------------------------------------------------------------------------------

def _read_voc_label(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Returns the (H, W) uint8 index map and its 256-bin histogram of a palette/grayscale PNG."""
    try:
        label = Image.open(path)
        # np.array on a "P" image gives the palette indices, which are the class ids; converting to
        # RGB first (a common bug) would give colours.
        if label.mode not in ("P", "L"):
            raise ConversionError(f"label {path} has mode {label.mode}; expected a palette (P) or "
                                  "grayscale (L) PNG of class indices.")
        label.load()
    except ConversionError:
        raise
    except Exception as e:
        raise ConversionError(f"label {path} does not decode: {e}") from None
    histogram = np.asarray(label.histogram(), np.int64)  # P and L: counts of the raw index values
    return np.array(label), histogram


def _read_sbd_label(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Returns the (H, W) uint8 class map of an SBD cls .mat file and its 256-bin histogram."""
    import scipy.io  # here so that a VOC-only run never pays for it

    try:
        segmentation = scipy.io.loadmat(
            path, struct_as_record=False, squeeze_me=True)["GTcls"].Segmentation
    except Exception as e:
        raise ConversionError(f"SBD label {path} does not read as a MATLAB v5 file with "
                              f"GTcls.Segmentation: {e!r}") from None
    segmentation = np.asarray(segmentation)
    if segmentation.ndim != 2:
        raise ConversionError(f"SBD label {path}: GTcls.Segmentation has shape "
                              f"{segmentation.shape}; expected (H, W).")
    if segmentation.dtype != np.uint8:
        if not np.issubdtype(segmentation.dtype, np.number) or (
                segmentation.size and (segmentation.min() < 0 or segmentation.max() > 255
                                       or np.any(segmentation != np.round(segmentation)))):
            bad = np.unique(segmentation)[:10]
            raise ConversionError(f"label {path} has values outside {{0..{NUM_CLASSES - 1}, "
                                  f"{IGNORE_LABEL}}}: {bad.tolist()}")
        segmentation = segmentation.astype(np.uint8)
    segmentation = np.ascontiguousarray(segmentation)  # loadmat gives Fortran order
    return segmentation, label_histogram(segmentation)


def prepare_example(source: ExampleSource) -> PreparedExample:
    """Reads and checks one example's files and encodes its label.

    Raises:
      ConversionError: the JPEG does not decode, the label does not read or holds values outside
        {0..20, 255}, or image and label differ in size.
    """
    image = read_jpeg(source.image_path)
    if source.label_source == "voc":
        label, histogram = _read_voc_label(source.label_path)
    else:
        label, histogram = _read_sbd_label(source.label_path)
    check_label_values(np.flatnonzero(histogram), NUM_CLASSES, IGNORE_LABEL, source.label_path)
    return finish_example(source.example_id, source.image_path, image, source.label_path, label,
                          histogram)
