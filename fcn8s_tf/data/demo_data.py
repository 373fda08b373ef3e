"""Small synthetic datasets, so the pipeline runs offline: VOC 2012 + SBD layout, or plain folders.

make_demo_dataset writes the real VOC 2012 + SBD layout:
    <output_dir>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
                                  /SegmentationClass/<id>.png      palette PNG, 255 boundary band
                                  /ImageSets/Segmentation/{train,val}.txt
    <output_dir>/benchmark_RELEASE/dataset/img/<id>.jpg
                                          /cls/<id>.mat            MATLAB v5 struct GTcls, no 255
                                          /{train,val}.txt

The content is made to be learnt in a few hundred steps from random init on a CPU: three VOC
classes, each always the same shape AND the same saturated hue, large (together 25-60% of the
image), on desaturated low-contrast backgrounds, so colour alone separates the classes and the
stride-32 path can place them.

The id sets mirror the real data's overlaps, so the converter's rules are exercised: some VOC train
ids also have an SBD .mat (the VOC PNG must win), some VOC val ids sit in SBD's train list (they
must stay out of train), and the SBD-only ids have their image under SBD img/ alone (the image
fallback).

make_folders_dataset writes what a user of --format=folders has, with three classes of its own:
    <output_dir>/images/<id>.jpg (every fourth <id>.png)
                /masks/<id>.png       RGB, each class in its colour, a white void band
                /classes.txt          background 0 0 0 / circle 0 192 0 / square 0 0 192

Everything is a function of the seed: the same seed gives byte-identical files.
"""

import io
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image, ImageDraw

from fcn8s_tf.class_info import IGNORE_LABEL, NUM_CLASSES, VOC_PALETTE

# VOC class id -> (shape, RGB colour). One shape and one hue per class.
DEMO_CLASSES = {
    1: ("triangle", (215, 55, 45)),   # aeroplane: red triangles
    8: ("circle", (55, 185, 65)),     # cat: green discs
    15: ("square", (60, 90, 220)),    # person: blue squares
}
# The folders dataset's classes: id -> (name, shape, image colour, mask colour).
FOLDER_CLASSES = {
    0: ("background", None, None, (0, 0, 0)),
    1: ("circle", "circle", (55, 185, 65), (0, 192, 0)),
    2: ("square", "square", (60, 90, 220), (0, 0, 192)),
}
FOLDER_VOID_COLOUR = (255, 255, 255)  # the boundary band of its masks: --ignore_color=255,255,255
JPEG_QUALITY = 90
# Width in pixels of the void band drawn along every class boundary of the VOC labels. The real
# band is about 5 px on 500 px images; 3 px keeps the same share of a 160 px image.
BOUNDARY_BAND = 3
_MARKER = "DEMO_DATASET.txt"
# MAT-file header text; scipy's default holds the current time, which would break byte determinism.
_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, written by fcn8s_tf.data.demo_data"

PathLike = Union[str, os.PathLike]
Colour = Tuple[int, int, int]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A desaturated, low-contrast float32 (H, W, 3) background: tinted grey, gradient, blotches,
    noise."""
    base = (rng.uniform(80, 180) + rng.uniform(-12, 12, size=3)).astype(np.float32)
    angle, amplitude = rng.uniform(0, 2 * np.pi), rng.uniform(-35, 35)
    x = np.arange(width, dtype=np.float32) * np.float32(amplitude * np.cos(angle) / width)
    y = np.arange(height, dtype=np.float32) * np.float32(amplitude * np.sin(angle) / height)
    # Low-frequency blotches: a coarse random grid upsampled bilinearly.
    coarse = rng.normal(0, 12, size=(5, 5)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    shading = blotches + x[None, :] + y[:, None]
    noise = rng.standard_normal((height, width, 3), dtype=np.float32)
    noise *= np.float32(rng.uniform(3, 10))
    noise += shading[..., None]
    noise += base
    return noise


def _shape_mask(rng: np.random.Generator, shape: str, area: float, height: int,
                width: int) -> np.ndarray:
    """A boolean (H, W) mask of one shape covering about `area` pixels, randomly placed/rotated."""
    if shape == "circle":
        radius = np.sqrt(area / np.pi)
        points = None
        half_extent = radius
    else:
        if shape == "square":
            side = np.sqrt(area)
            corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * side / 2
        else:  # equilateral triangle around its centroid
            side = np.sqrt(4 * area / np.sqrt(3))
            circumradius = side / np.sqrt(3)
            angles = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
            corners = circumradius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        theta = rng.uniform(0, 2 * np.pi)
        rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        points = corners @ rotation.T
        half_extent = np.abs(points).max(axis=0)
    # Keep most of the shape inside the image: at most 15% of its extent may stick out.
    half_extent = np.broadcast_to(np.asarray(half_extent, np.float64), (2,))
    low = 0.85 * half_extent
    high = np.array([width, height]) - 0.85 * half_extent
    center = rng.uniform(np.minimum(low, high), np.maximum(low, high))
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if points is None:
        cx, cy = center
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    else:
        draw.polygon([tuple(p) for p in points + center], fill=1)
    return np.asarray(canvas, dtype=bool)


def render_example(rng: np.random.Generator, height: int, width: int,
                   classes: Optional[Dict[int, Tuple[str, Colour]]] = None
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Draws one synthetic image and its label.

    Args:
      classes: {class id: (shape, RGB colour)} of the objects; default DEMO_CLASSES.
    Returns:
      image: uint8 (H, W, 3) RGB.
      label: uint8 (H, W) class ids in {0} ∪ classes, no void band (SBD style).
    """
    classes = DEMO_CLASSES if classes is None else classes
    image = _background(rng, height, width)
    label = np.zeros((height, width), np.uint8)
    num_objects = int(rng.integers(1, 3))
    # Together the objects cover 25-60% of the image (less where they overlap or stick out).
    total = rng.uniform(0.25, 0.60) * height * width
    shares = rng.dirichlet(np.full(num_objects, 4.0)) if num_objects > 1 else np.ones(1)
    class_ids = sorted(classes)
    for share in shares:
        class_id = class_ids[int(rng.integers(len(class_ids)))]
        shape, colour = classes[class_id]
        mask = _shape_mask(rng, shape, share * total, height, width)
        shade = np.float32(rng.uniform(0.8, 1.1))
        texture = rng.standard_normal((int(mask.sum()), 3), dtype=np.float32) * np.float32(6)
        image[mask] = np.asarray(colour, np.float32) * shade + texture
        label[mask] = class_id
    return np.clip(np.rint(image, out=image), 0, 255, out=image).astype(np.uint8), label


def add_boundary_band(label: np.ndarray, width: int = BOUNDARY_BAND) -> np.ndarray:
    """Marks IGNORE_LABEL along every boundary between different classes, as VOC labels do.

    The band is `width` pixels across each boundary (1 px each side, then grown down and right).
    """
    edge = np.zeros(label.shape, bool)
    horizontal = label[:, 1:] != label[:, :-1]
    vertical = label[1:, :] != label[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    band = edge.copy()
    for _ in range(max(0, width - 2)):
        grown = band.copy()
        grown[1:, :] |= band[:-1, :]
        grown[:, 1:] |= band[:, :-1]
        band = grown
    banded = label.copy()
    banded[band] = IGNORE_LABEL
    return banded


def _jpeg_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def palette_png_bytes(label: np.ndarray) -> bytes:
    """A VOC-style label file: 8-bit palette PNG of class indices with the VOC colour map."""
    height, width = label.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(label).tobytes())
    image.putpalette(VOC_PALETTE.tobytes())
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _sbd_mat_bytes(label: np.ndarray) -> bytes:
    """An SBD-style cls .mat: MATLAB v5, zlib-compressed, struct GTcls with the real field order."""
    boundaries = np.empty((NUM_CLASSES - 1, 1), dtype=object)
    edges = add_boundary_band(label, width=2) == IGNORE_LABEL
    empty = scipy.sparse.csc_matrix(label.shape, dtype=np.uint8)  # building sparse is slow: share
    for class_id in range(1, NUM_CLASSES):
        class_edges = edges & (label == class_id)
        boundaries[class_id - 1, 0] = (scipy.sparse.csc_matrix(class_edges.astype(np.uint8))
                                       if class_edges.any() else empty)
    present = np.unique(label[label > 0]).astype(np.uint8).reshape(-1, 1)
    gtcls = {"Boundaries": boundaries, "Segmentation": np.asfortranarray(label),
             "CategoriesPresent": present}
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"GTcls": gtcls}, do_compression=True, oned_as="column")
    data = buf.getvalue()
    return _MAT_HEADER.ljust(116, b" ") + data[116:]


def _write_list(path: Path, ids: Sequence[str]) -> None:
    path.write_text("".join(f"{i}\n" for i in ids))


def make_demo_dataset(output_dir: PathLike, *, seed: int = 0, num_train: int = 240,
                      num_val: int = 48,
                      image_size: Tuple[int, int] = (160, 160)) -> Dict[str, Path]:
    """Writes the synthetic dataset under output_dir (see the module docstring for the layout).

    Args:
      output_dir: created if needed; a demo dataset already there (marked by DEMO_DATASET.txt)
        is replaced, any other VOCdevkit/ or benchmark_RELEASE/ there is an error.
      seed: the only source of randomness; the same seed gives byte-identical files.
      num_train: train ids after the converter's split rule, VOC and SBD together (>= 4).
      num_val: VOC2012 seg val ids (>= 1).
      image_size: (height, width) of every image.
    Returns:
      {"voc_root": .../VOCdevkit/VOC2012, "sbd_root": .../benchmark_RELEASE/dataset}.
    """
    height, width = (int(v) for v in image_size)
    if num_train < 4 or num_val < 1 or height < 16 or width < 16:
        raise ValueError(f"need num_train >= 4, num_val >= 1 and sides >= 16 px; got "
                         f"num_train={num_train}, num_val={num_val}, image_size={image_size}")
    output_dir = Path(output_dir)
    voc_root = output_dir / "VOCdevkit" / "VOC2012"
    sbd_root = output_dir / "benchmark_RELEASE" / "dataset"
    ours = [output_dir / "VOCdevkit", output_dir / "benchmark_RELEASE"]
    if any(p.exists() for p in ours):
        if not (output_dir / _MARKER).is_file():
            raise FileExistsError(f"{output_dir} holds VOCdevkit/ or benchmark_RELEASE/ that this "
                                  f"tool did not write (no {_MARKER}); refusing to replace them.")
        for path in ours:
            shutil.rmtree(path, ignore_errors=True)
    for folder in (voc_root / "JPEGImages", voc_root / "SegmentationClass",
                   voc_root / "ImageSets" / "Segmentation", sbd_root / "img", sbd_root / "cls"):
        folder.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    # Who is where. A quarter of train comes with a VOC label, the rest from SBD alone, as in the
    # real data (1,464 of 10,582); a third of the VOC train ids and a quarter of the val ids also
    # have an SBD .mat, the val ones in SBD's train list (as in the real SBD lists).
    num_voc_train = max(1, num_train // 4)
    ids = [f"demo_{i:06d}" for i in range(num_train + num_val)]
    voc_train, sbd_only = ids[:num_voc_train], ids[num_voc_train:num_train]
    val = ids[num_train:]
    voc_train_in_sbd = voc_train[::3]
    val_in_sbd = val[::4]
    sbd_ids = sorted(set(sbd_only) | set(voc_train_in_sbd) | set(val_in_sbd))
    # SBD's own train/val split (about 3:1); VOC val ids always in SBD train.
    sbd_val = sorted(i for i in sbd_ids if i not in val_in_sbd and rng.random() < 0.25)
    sbd_train = sorted(set(sbd_ids) - set(sbd_val))

    in_voc = set(voc_train) | set(val)
    in_sbd = set(sbd_ids)
    for example_id in ids:
        image, label = render_example(rng, height, width)
        jpeg = _jpeg_bytes(image)
        if example_id in in_voc:
            (voc_root / "JPEGImages" / f"{example_id}.jpg").write_bytes(jpeg)
            (voc_root / "SegmentationClass" / f"{example_id}.png").write_bytes(
                palette_png_bytes(add_boundary_band(label)))
        if example_id in in_sbd:
            (sbd_root / "img" / f"{example_id}.jpg").write_bytes(jpeg)
            (sbd_root / "cls" / f"{example_id}.mat").write_bytes(_sbd_mat_bytes(label))

    _write_list(voc_root / "ImageSets" / "Segmentation" / "train.txt", voc_train)
    _write_list(voc_root / "ImageSets" / "Segmentation" / "val.txt", val)
    _write_list(sbd_root / "train.txt", sbd_train)
    _write_list(sbd_root / "val.txt", sbd_val)
    (output_dir / _MARKER).write_text(
        "Synthetic demo data written by fcn8s_tf.data.demo_data (tools/make_demo_dataset.py): "
        f"seed={seed} num_train={num_train} num_val={num_val} image_size={height}x{width}\n"
        f"classes: {', '.join(f'{k} {s}' for k, (s, _) in DEMO_CLASSES.items())}\n")
    return {"voc_root": voc_root, "sbd_root": sbd_root}


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def _claim(output_dir: Path, ours: Sequence[Path]) -> None:
    """Removes an earlier demo's files from output_dir; refuses files this module did not write."""
    if any(p.exists() for p in ours):
        if not (output_dir / _MARKER).is_file():
            names = ", ".join(p.name for p in ours)
            raise FileExistsError(f"{output_dir} holds some of {names} that this tool did not "
                                  f"write (no {_MARKER}); refusing to replace them.")
        for path in ours:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()


def make_folders_dataset(output_dir: PathLike, *, seed: int = 0, num_images: int = 240,
                         image_size: Tuple[int, int] = (160, 160)) -> Dict[str, Path]:
    """Writes the three-class folders dataset under output_dir (layout in the module docstring).

    Args:
      output_dir: created if needed; a demo dataset already there (DEMO_DATASET.txt) is
        replaced, other images/, masks/ or classes.txt there are an error.
      seed: the only source of randomness; the same seed gives byte-identical files.
      num_images: image/mask pairs (>= 2: the converter's default split needs one for val).
      image_size: (height, width) of every image.
    Returns:
      {"images": .../images, "masks": .../masks, "classes": .../classes.txt}.
    """
    height, width = (int(v) for v in image_size)
    if num_images < 2 or height < 16 or width < 16:
        raise ValueError(f"need num_images >= 2 and sides >= 16 px; got num_images={num_images}, "
                         f"image_size={image_size}")
    output_dir = Path(output_dir)
    paths = {"images": output_dir / "images", "masks": output_dir / "masks",
             "classes": output_dir / "classes.txt"}
    _claim(output_dir, list(paths.values()))
    paths["images"].mkdir(parents=True)
    paths["masks"].mkdir()
    shapes = {k: (shape, colour) for k, (_, shape, colour, _) in FOLDER_CLASSES.items() if shape}
    colours = np.zeros((256, 3), np.uint8)
    colours[IGNORE_LABEL] = FOLDER_VOID_COLOUR
    for class_id, (_, _, _, mask_colour) in FOLDER_CLASSES.items():
        colours[class_id] = mask_colour

    rng = np.random.default_rng(seed)
    for index in range(num_images):
        example_id = f"shapes_{index:04d}"
        image, label = render_example(rng, height, width, shapes)
        if index % 4 == 3:  # some PNG images: the converter re-encodes them losslessly
            (paths["images"] / f"{example_id}.png").write_bytes(_png_bytes(image))
        else:
            (paths["images"] / f"{example_id}.jpg").write_bytes(_jpeg_bytes(image))
        mask = colours[add_boundary_band(label)]
        (paths["masks"] / f"{example_id}.png").write_bytes(_png_bytes(mask))
    paths["classes"].write_text(
        "# name r g b: the colour of the class in masks/ (void: 255 255 255, --ignore_color)\n"
        + "".join(f"{name} {' '.join(map(str, colour))}\n"
                  for name, _, _, colour in FOLDER_CLASSES.values()))
    (output_dir / _MARKER).write_text(
        "Synthetic demo data written by fcn8s_tf.data.demo_data (tools/make_demo_dataset.py "
        f"--format=folders): seed={seed} num_images={num_images} image_size={height}x{width}\n")
    return paths
