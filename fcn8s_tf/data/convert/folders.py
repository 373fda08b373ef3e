"""The folders source of the converter: your own dataset, any classes, any colours.

    --images=DIR    <id>.jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp, .ppm, .pgm (not sub-folders;
                    hidden files skipped, other files noted and skipped)
    --masks=DIR     <id>.png: class ids (8-, 16- or 1-bit grayscale), or colours (RGB, or a
                    palette PNG read as its colours) mapped to ids by the classes file's colours
    --classes=FILE  one class a line in id order, `name` or `name r g b` (every line with a colour,
                    or none); blank and # lines skipped. Without colours masks hold ids (a palette
                    PNG's indices are its ids, as VOC's) and the manifest gets VOC's first colours.
Void pixels (skipped by the loss and the metric) are --ignore_value in id masks (default 255) and
--ignore_color in colour masks (none by default: every colour must be a class's); the records
hold them as 255 whatever the source used.

Splits: --splits=train:0.9,val:0.1 deals the sorted ids out by a shuffle seeded with --seed (the
same files and seed give the same split; adding files changes it), or --train_list/--val_list name
each split's ids (one a line, as VOC's lists; files not listed are not converted).

Sizes are compared as stored: EXIF orientation is not applied (TensorFlow's decoders ignore it).
prepare_example runs in the worker processes (with masks): no TensorFlow here.
"""

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fcn8s_tf.class_info import IGNORE_LABEL, VOC_PALETTE
from fcn8s_tf.data.convert.examples import (Classes, Plan, PreparedExample, finish_example,
                                            label_histogram, read_id_list, read_image)
from fcn8s_tf.data.convert.layout import (MAX_CLASSES, ConversionError, PathLike, check_split_name,
                                          format_names)
from fcn8s_tf.data.convert.masks import Colour, MaskRules, read_mask

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MASK_SUFFIX = ".png"
DEFAULT_SPLITS = {"train": 0.9, "val": 0.1}


# ----------------------------------------------------------------------------------------------
# The classes file and the split flags.
# ----------------------------------------------------------------------------------------------

def _colour_or_none(tokens: Sequence[str], where: str) -> Optional[Colour]:
    """The (r, g, b) that ends a classes file line, or None when it ends in a name."""
    numbers = 0
    while numbers < len(tokens) - 1 and tokens[-1 - numbers].lstrip("-").isdigit():
        numbers += 1
    if numbers == 0:
        return None
    if numbers != 3:
        raise ConversionError(f"{where}: expected `name` or `name r g b`, got "
                              f"{' '.join(tokens)!r}.")
    colour = tuple(int(t) for t in tokens[-3:])
    if not all(0 <= c <= 255 for c in colour):
        raise ConversionError(f"{where}: colour {colour} has a value outside 0..255.")
    return colour


def read_classes_file(path: PathLike) -> Tuple[Classes, bool]:
    """Reads a classes file; returns the classes and whether the file gave their colours.

    Raises:
      ConversionError: the file is missing or empty, a line is malformed, a name or colour
        repeats, some lines have colours and others not, or there are more than 255 classes.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"--classes={path}: the file does not exist (one class a line, in "
                              "id order: `name` or `name r g b`).")
    names, colours, numbers, first_without = [], [], [], None
    # utf-8-sig: Windows editors start a UTF-8 file with a BOM, which is no part of a class name.
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        colour = _colour_or_none(tokens, f"{path}:{number}")
        name = " ".join(tokens[:-3] if colour else tokens)
        if name in names:
            raise ConversionError(f"{path}:{number}: class name {name!r} repeats line "
                                  f"{numbers[names.index(name)]}.")
        if colour is not None and colour in colours:
            raise ConversionError(f"{path}:{number}: colour {colour} is also class "
                                  f"{names[colours.index(colour)]!r}'s.")
        if colour is None and first_without is None:
            first_without = (number, name)
        names.append(name)
        colours.append(colour)
        numbers.append(number)
    if not names:
        raise ConversionError(f"--classes={path} lists no classes.")
    if len(names) > MAX_CLASSES:
        raise ConversionError(f"--classes={path} lists {len(names)} classes; at most "
                              f"{MAX_CLASSES} (ids 0..{MAX_CLASSES - 1}; 255 is void).")
    given = first_without is None
    if not given and any(colours):
        raise ConversionError(f"{path}:{first_without[0]}: class {first_without[1]!r} has no "
                              "colour, but others do: give every class `name r g b`, or none.")
    palette = colours if given else [tuple(int(c) for c in VOC_PALETTE[i])
                                     for i in range(len(names))]
    return Classes(tuple(names), tuple(palette)), given


def parse_splits(text: str) -> Dict[str, float]:
    """--splits=train:0.9,val:0.1 -> {"train": 0.9, "val": 0.1}; fractions > 0 adding up to 1."""
    flag = f"--splits={text}"
    fractions = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition(":")
        check_split_name(name, flag)
        try:
            fraction = float(value)
        except ValueError:
            fraction = float("nan")
        if not 0 < fraction <= 1 or name in fractions:
            raise ConversionError(f"{flag}: expected split:fraction pairs such as "
                                  "train:0.9,val:0.1, each split once, fractions in (0, 1].")
        fractions[name] = fraction
    if not fractions or abs(sum(fractions.values()) - 1) > 1e-6:
        raise ConversionError(f"{flag}: the fractions add up to {sum(fractions.values()):g}, "
                              "not 1.")
    return fractions


def parse_colour(text: str, flag: str) -> Colour:
    """"R,G,B" -> (r, g, b), each 0..255."""
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) <= 255 for p in parts):
        raise ConversionError(f"{flag}={text}: expected R,G,B with each in 0..255.")
    return tuple(int(p) for p in parts)


def seeded_split(ids: Sequence[str], fractions: Dict[str, float],
                 seed: int) -> Dict[str, List[str]]:
    """Deals ids into splits of the given fractions by a seeded shuffle of the sorted ids.

    Sizes are the largest-remainder rounding of fraction x count (they add up to the count);
    each split's ids come back sorted. The same ids and seed always give the same split.
    """
    ids = sorted(ids)
    exact = [fraction * len(ids) for fraction in fractions.values()]
    sizes = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (sizes[i] - exact[i], i))
    for i in by_remainder[:len(ids) - sum(sizes)]:
        sizes[i] += 1
    order = np.random.default_rng(seed).permutation(len(ids))
    splits, start = {}, 0
    for split, size in zip(fractions, sizes):
        splits[split] = sorted(ids[k] for k in order[start:start + size])
        start += size
    return splits


# ----------------------------------------------------------------------------------------------
# Planning: pair the files, split them, all before anything is read.
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FolderSource:
    """One example's files; what a worker process receives."""
    example_id: str
    image_path: str
    mask_path: str


def _files_by_id(folder: Path, flag: str, suffixes: Sequence[str]) -> Tuple[Dict[str, Path],
                                                                               List[str]]:
    """{id: path} of the files in folder with one of the suffixes; and the names skipped."""
    if not folder.is_dir():
        raise ConversionError(f"{flag}={folder}: the folder does not exist.")
    found, skipped, twice = {}, [], []
    for name in sorted(os.listdir(folder)):
        stem, suffix = os.path.splitext(name)
        if name.startswith("."):
            continue
        if suffix.lower() not in suffixes or not (folder / name).is_file():
            skipped.append(name)
        elif stem in found:
            twice.append(f"{found[stem].name} and {name}")
        else:
            found[stem] = folder / name
    if twice:
        raise ConversionError(f"{flag}={folder} holds two files for one id: "
                              f"{format_names(twice)}; keep one of each.")
    return found, skipped


def _missing(split: str, ids: Sequence[str], found: Dict[str, Path], what: str) -> List[str]:
    absent = [i for i in ids if i not in found]
    return [f"{len(absent)} of {len(ids)} {split} ids have no {what}: {format_names(absent)}"] \
        if absent else []


def _listed_ids(lists: Dict[str, PathLike]) -> Dict[str, List[str]]:
    """Each split's ids from its list file (an id may carry an image suffix); no id twice."""
    ids, seen = {}, {}
    for split, path in lists.items():
        flag = f"--{split}_list={path}"
        check_split_name(split, flag)
        listed = [Path(i).stem if Path(i).suffix.lower() in IMAGE_SUFFIXES else i
                  for i in read_id_list(Path(path), f" ({flag})")]
        ids[split] = sorted(set(listed))
        twice = [i for i in ids[split] if i in seen]
        if twice:
            raise ConversionError(f"{flag} lists ids that {seen[twice[0]]} lists too: "
                                  f"{format_names(twice)}; a split must not see another's.")
        seen.update({i: flag for i in ids[split]})
    return ids


def _check_paired(images: Dict[str, Path], masks: Dict[str, Path],
                  folders: Tuple[str, str]) -> None:
    """Without lists every file is converted: each image needs its mask and each mask its image."""
    no_mask = [i for i in sorted(images) if i not in masks]
    no_image = [i for i in sorted(masks) if i not in images]
    problems = [f"{len(no_mask)} of {len(images)} images in {folders[0]} have no mask "
                f"(<id>{MASK_SUFFIX}) in {folders[1]}: {format_names(no_mask)}"] if no_mask else []
    problems += [f"{len(no_image)} of {len(masks)} masks in {folders[1]} have no image in "
                 f"{folders[0]}: {format_names(no_image)}"] if no_image else []
    if problems:
        raise ConversionError("\n".join(problems))


def _split_ids(images: Dict[str, Path], masks: Dict[str, Path], fractions: Dict[str, float],
               lists: Optional[Dict[str, PathLike]], seed: int,
               folders: Tuple[str, str]) -> Dict[str, List[str]]:
    """The ids of each split, listed or dealt by the seed, each checked to have both files."""
    if lists:
        ids = _listed_ids(lists)
    else:
        _check_paired(images, masks, folders)
        ids = seeded_split(sorted(images), fractions, seed)
    problems = []
    for split, split_ids in ids.items():
        problems += _missing(split, split_ids, images, f"image in {folders[0]}")
        problems += _missing(split, split_ids, masks, f"mask (<id>{MASK_SUFFIX}) in {folders[1]}")
    if problems:
        raise ConversionError("\n".join(problems))
    for split, split_ids in ids.items():
        if not split_ids:
            raise ConversionError(f"the {split} split is empty ({len(images)} image/mask pairs; "
                                  "give more, or a larger fraction, or a list with ids).")
    return ids


def plan(images: PathLike, masks: PathLike, classes_file: PathLike, *,
         splits: Optional[Dict[str, float]] = None, lists: Optional[Dict[str, PathLike]] = None,
         seed: int = 0, ignore_value: int = IGNORE_LABEL,
         ignore_color: Optional[Colour] = None) -> Plan:
    """The whole conversion of an images folder and a masks folder; nothing read but listings.

    Args:
      images, masks, classes_file: see the module docstring.
      splits: {split: fraction} for a seeded split (default train 0.9, val 0.1).
      lists: {split: list file} instead of splits.
      seed: the split's shuffle.
      ignore_value: void in id masks (0..255, not a class id).
      ignore_color: void in colour masks, or None.
    Raises:
      ConversionError: a folder or file is missing, files do not pair up, a flag is wrong.
    """
    if splits and lists:
        raise ConversionError("give --splits or --train_list/--val_list, not both.")
    images, masks = Path(images).absolute(), Path(masks).absolute()
    classes_file = Path(classes_file).absolute()
    classes, coloured = read_classes_file(classes_file)
    rules = _mask_rules(classes, coloured, ignore_value, ignore_color, classes_file)
    image_files, skipped_images = _files_by_id(images, "--images", IMAGE_SUFFIXES)
    mask_files, skipped_masks = _files_by_id(masks, "--masks", (MASK_SUFFIX,))
    fractions = splits or DEFAULT_SPLITS
    ids = _split_ids(image_files, mask_files, fractions, lists, seed,
                     (f"--images={images}", f"--masks={masks}"))
    split_info = {split: {"list_files": {"include": [str(Path(path).absolute())], "exclude": []}}
                  for split, path in (lists or {}).items()}
    sources = {split: [FolderSource(i, str(image_files[i]), str(mask_files[i])) for i in split_ids]
               for split, split_ids in ids.items()}
    created = {"source": "folders", "images": str(images), "masks": str(masks),
               "classes_file": str(classes_file), "mask_ignore_value": ignore_value,
               "mask_ignore_color": list(ignore_color) if ignore_color is not None else None,
               "split": ({"lists": {s: str(Path(p).absolute()) for s, p in lists.items()}}
                         if lists else {"seed": seed, "fractions": fractions})}
    image_kinds = f"images ({', '.join(IMAGE_SUFFIXES)})"
    notes = [f"note: skipped {len(names)} entries of {flag} that are not {what}: "
             f"{format_names(names)}" for names, flag, what in (
                 (skipped_images, f"--images={images}", image_kinds),
                 (skipped_masks, f"--masks={masks}", f"{MASK_SUFFIX} masks")) if names]
    return Plan(sources, functools.partial(prepare_example, rules), classes, created, split_info,
                notes)


def _mask_rules(classes: Classes, coloured: bool, ignore_value: int,
                ignore_color: Optional[Colour], classes_file: Path) -> MaskRules:
    if not isinstance(ignore_value, int) or not 0 <= ignore_value <= 255:
        raise ConversionError(f"--ignore_value={ignore_value}: must be in 0..255.")
    if ignore_value < len(classes.names):
        raise ConversionError(
            f"--ignore_value={ignore_value} is class {classes.names[ignore_value]!r} of "
            f"{classes_file}; void needs a value that no class has (default 255).")
    if ignore_color is not None and coloured and tuple(ignore_color) in classes.palette:
        name = classes.names[classes.palette.index(tuple(ignore_color))]
        raise ConversionError(f"--ignore_color={','.join(map(str, ignore_color))} is class "
                              f"{name!r}'s colour in {classes_file}.")
    return MaskRules(len(classes.names), classes.palette if coloured else None, ignore_value,
                     tuple(ignore_color) if ignore_color is not None else None, str(classes_file))


# ----------------------------------------------------------------------------------------------
# One example. Runs in the worker processes; no TensorFlow here.
# ----------------------------------------------------------------------------------------------

def prepare_example(rules: MaskRules, source: FolderSource) -> PreparedExample:
    """Reads and checks one image and its mask, and encodes the mask as class ids."""
    image = read_image(source.image_path)
    label = read_mask(source.mask_path, rules)
    return finish_example(source.example_id, source.image_path, image, source.mask_path, label,
                          label_histogram(label))
