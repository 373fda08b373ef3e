"""The sample images a run measures with: real VOC files, or synthetic ones at VOC sizes.

A user's clone has no VOC files, so by default the run writes synthetic pairs:
fcn8s_tf.data.demo_data's images (shapes of three classes on a textured background, labels with the
255 boundary band), drawn at the sizes VOC images have, then contrast-stretched and given
pixel-level texture so that their JPEGs are as large as real VOC photos (the 30 real sample images
average 87 KiB, mostly at 500x375; demo_data's plain images are about 40 KiB) and cost about as much
to decode. This module needs no TensorFlow: the parent process writes the images before any child
starts.
"""

import io
import os
import shutil
from typing import Dict, Tuple

import numpy as np
from PIL import Image

from fcn8s_tf import class_info
from fcn8s_tf.data import demo_data

# (height, width) cycled through: the most common VOC 2012 sizes, landscape first (the inference
# image is the first pair of 375x500).
VOC_SIZES = ((375, 500), (500, 375), (333, 500), (375, 500), (281, 500))
# Texture added after contrast stretching: noise on 2x2 blocks (sigma 12) and per pixel (sigma 6).
# Chosen so that the JPEGs average about what the real sample does (measured: 84 vs 87 KiB).
_BLOCK_NOISE = (2, 12.0)
_PIXEL_NOISE = 6.0


def _textured(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """image stretched to the full 0-255 range, plus block and pixel noise; uint8 (H, W, 3)."""
    x = image.astype(np.float32)
    low, high = np.percentile(x, [1, 99])
    x = (x - low) * np.float32(255.0 / max(high - low, 1.0))
    height, width = image.shape[:2]
    block, sigma = _BLOCK_NOISE
    coarse = rng.normal(0, sigma, (height // block + 1, width // block + 1, 3)).astype(np.float32)
    x += np.repeat(np.repeat(coarse, block, 0), block, 1)[:height, :width]
    x += rng.normal(0, _PIXEL_NOISE, x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _palette_png(label: np.ndarray) -> bytes:
    """A VOC label file: 8-bit palette PNG of class indices with the VOC colour map."""
    height, width = label.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(label).tobytes())
    image.putpalette(class_info.VOC_PALETTE.tobytes())
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_synthetic_voc(root: str, num_images: int, seed: int = 0) -> Dict:
    """Writes num_images synthetic pairs as <root>/JPEGImages/*.jpg, SegmentationClass/*.png.

    Args:
      root: the VOC2012-style folder to create.
      num_images: pairs to write, sizes cycling through VOC_SIZES.
      seed: the only source of randomness.
    Returns:
      describe_sample(root), with "source" saying how the images were made.
    """
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "SegmentationClass"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for k in range(num_images):
        height, width = VOC_SIZES[k % len(VOC_SIZES)]
        image, label = demo_data.render_example(rng, height, width)
        Image.fromarray(_textured(rng, image)).save(
            os.path.join(root, "JPEGImages", f"synthetic_{k:05d}.jpg"), "JPEG",
            quality=demo_data.JPEG_QUALITY)
        with open(os.path.join(root, "SegmentationClass", f"synthetic_{k:05d}.png"), "wb") as f:
            f.write(_palette_png(demo_data.add_boundary_band(label)))
    return dict(describe_sample(root), source=(
        f"synthetic: fcn8s_tf.data.demo_data images (seed {seed}) at VOC sizes, contrast-stretched "
        "and textured to real VOC JPEG sizes (tools/bench/data.py); pass --sample_voc_root= for "
        "real VOC files"))


def describe_sample(root: str) -> Dict:
    """{"root", "source", "images", "mean_jpeg_kb", "sizes"} of a folder's JPEGImages/."""
    folder = os.path.join(root, "JPEGImages")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--sample_voc_root={root}: no JPEGImages/ folder (give a VOC2012 "
                                "folder, or leave the flag empty for synthetic images)")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".jpg"))
    if not names:
        raise FileNotFoundError(f"--sample_voc_root={root}: no JPEGImages/*.jpg")
    sizes = {}
    for name in names:
        with Image.open(os.path.join(folder, name)) as image:
            key = f"{image.size[0]}x{image.size[1]}"
        sizes[key] = sizes.get(key, 0) + 1
    total = sum(os.path.getsize(os.path.join(folder, n)) for n in names)
    return {"root": root, "source": f"real: {root}", "images": len(names),
            "mean_jpeg_kb": total / len(names) / 1024, "sizes": sizes}


def make_voc_copy(sample_root: str, output_root: str, num_images: int,
                  val_every: int = 6) -> Dict[str, int]:
    """A VOC2012-style folder of num_images pairs cycling through sample_root's JPEG/PNG pairs.

    Pair k of the copy is `bench_<k>` (JPEGImages/, SegmentationClass/); every val_every-th id goes
    to ImageSets/Segmentation/val.txt, the rest to train.txt. Returns {"train": n, "val": n}.
    """
    label_dir = os.path.join(sample_root, "SegmentationClass")
    if not os.path.isdir(label_dir):
        raise FileNotFoundError(f"--sample_voc_root={sample_root}: no SegmentationClass/ folder")
    ids = sorted(name[:-4] for name in os.listdir(label_dir) if name.endswith(".png")
                 and os.path.isfile(os.path.join(sample_root, "JPEGImages", name[:-4] + ".jpg")))
    if not ids:
        raise FileNotFoundError(f"--sample_voc_root={sample_root}: no JPEG/PNG pairs")
    for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(output_root, sub), exist_ok=True)
    splits = {"train": [], "val": []}
    for k in range(num_images):
        source, new_id = ids[k % len(ids)], f"bench_{k:05d}"
        for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
            shutil.copyfile(os.path.join(sample_root, sub, source + ext),
                            os.path.join(output_root, sub, new_id + ext))
        splits["val" if k % val_every == 0 else "train"].append(new_id)
    for split, split_ids in splits.items():
        with open(os.path.join(output_root, "ImageSets", "Segmentation", f"{split}.txt"), "w",
                  encoding="utf-8") as f:
            f.write("".join(i + "\n" for i in split_ids))
    return {split: len(split_ids) for split, split_ids in splits.items()}


def prepare_inference_image(voc_root: str, size: Tuple[int, int], path: str) -> str:
    """A JPEG of size (height, width) at path: a sample image of that size as is, else one resized.
    Returns which image it is, for the report."""
    height, width = size
    folder = os.path.join(voc_root, "JPEGImages")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".jpg"))
    if not names:
        raise FileNotFoundError(f"--sample_voc_root={voc_root}: no JPEGImages/*.jpg")
    for name in names:
        with Image.open(os.path.join(folder, name)) as image:
            if image.size == (width, height):
                shutil.copyfile(os.path.join(folder, name), path)
                return name
    with Image.open(os.path.join(folder, names[0])) as image:
        image.convert("RGB").resize((width, height), Image.BILINEAR).save(path, quality=90)
    return f"{names[0]} resized to {width}x{height}"
