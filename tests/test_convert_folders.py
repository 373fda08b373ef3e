"""The folders converter (--format=folders): your own images, masks and classes.

Each test writes a tiny dataset whose labels it knows, converts it, and reads the records back
through the real input pipeline (input_pipeline.eval_dataset) or with plain tf.data, so what is
checked is what training will see. Errors must name the file and leave nothing behind.
"""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcn8s_tf.class_info import VOC_PALETTE
from fcn8s_tf.data import input_pipeline
from fcn8s_tf.data.convert import convert
from fcn8s_tf.data.convert import folders as convert_folders
from fcn8s_tf.data.convert import layout as convert_layout
from fcn8s_tf.data.convert.layout import ConversionError

from helpers import REPO, left_behind, run_python


CLASSES = [("background", (0, 0, 0)), ("cat", (200, 30, 30)), ("dog", (30, 30, 200))]
VOID = (255, 255, 255)
SIZE = (12, 16)  # (H, W)
NUM = 8


def _label(k: int) -> np.ndarray:
    """Example k's class ids: random 0..2, a void first row; class 2 only in even examples."""
    label = np.random.default_rng(k).integers(0, 3 if k % 2 == 0 else 2, SIZE).astype(np.uint8)
    label[0, :] = 255
    return label


def _image(k: int) -> np.ndarray:
    return np.random.default_rng(100 + k).integers(0, 256, SIZE + (3,)).astype(np.uint8)


def _save(array_or_image, path: Path, format: str = None, **kwargs) -> None:
    image = (array_or_image if isinstance(array_or_image, Image.Image)
             else Image.fromarray(array_or_image))
    image.save(path, format, **kwargs)


def _mask(label: np.ndarray, kind: str) -> Image.Image:
    """label (255 void) as a mask file of the given kind."""
    if kind == "rgb":
        colours = np.zeros((256, 3), np.uint8)
        colours[:3] = [c for _, c in CLASSES]
        colours[255] = VOID
        return Image.fromarray(colours[label])
    if kind == "palette":  # classes at indices that are not their ids: the colours count
        indices = {0: 17, 1: 4, 2: 250, 255: 9}
        lut = np.zeros(256, np.uint8)
        for value, index in indices.items():
            lut[value] = index
        palette = np.random.default_rng(0).integers(0, 256, (256, 3)).astype(np.uint8)
        palette[255] = (1, 2, 3)  # a colour no class has, at an index no pixel uses
        for class_id, (_, colour) in enumerate(CLASSES):
            palette[indices[class_id]] = colour
        palette[indices[255]] = VOID
        image = Image.fromarray(lut[label], "L").convert("P")
        image.putpalette(palette.tobytes())
        return image
    if kind == "ids":  # void as 200 (--ignore_value=200)
        return Image.fromarray(np.where(label == 255, 200, label).astype(np.uint8), "L")
    if kind == "ids16":
        return Image.fromarray(np.where(label == 255, 200, label).astype(np.uint16))
    raise ValueError(kind)


def _write_classes(path: Path, colours: bool = True) -> Path:
    path.write_text("# name r g b\n\n" + "".join(
        f"{name} {' '.join(map(str, colour))}\n" if colours else f"{name}\n"
        for name, colour in CLASSES))
    return path


def _make(root: Path, mask_kind: str = "rgb", png_every: int = 3, num: int = NUM):
    """images/, masks/ and classes.txt under root; returns {id: (image, label)}."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    expected = {}
    for k in range(num):
        example_id = f"ex_{k:02d}"
        image, label = _image(k), _label(k)
        if png_every and k % png_every == 1:
            _save(image, root / "images" / f"{example_id}.png")
        else:
            _save(image, root / "images" / f"{example_id}.jpg", quality=95)
        _save(_mask(label, mask_kind), root / "masks" / f"{example_id}.png")
        expected[example_id] = (image, label)
    _write_classes(root / "classes.txt", colours=mask_kind in ("rgb", "palette"))
    return expected


def _kwargs(mask_kind: str) -> dict:
    if mask_kind in ("ids", "ids16"):
        return {"ignore_value": 200}
    return {"ignore_color": VOID}


def _convert(root: Path, output_dir: Path, **kwargs):
    kwargs.setdefault("num_workers", 1)
    kwargs.setdefault("progress_stream", None)
    kwargs.setdefault("num_shards", {"train": 2, "val": 1})
    return convert.convert_folders(root / "images", root / "masks", root / "classes.txt",
                                   output_dir, **kwargs)


def _read_back(output_dir: Path, split: str):
    """{id: (image, label)} through the training input pipeline's eval reader."""
    dataset = input_pipeline.eval_dataset(convert_layout.shard_pattern(output_dir, split),
                                          num_classes=len(CLASSES))
    return {name.decode(): (image, label[..., 0])
            for image, label, name in dataset.as_numpy_iterator()}


def _raw_records(output_dir: Path, split: str):
    files = sorted(str(p) for p in output_dir.glob(f"{split}-*.tfrecord"))
    return [tf.train.Example.FromString(r).features.feature
            for r in tf.data.TFRecordDataset(files).as_numpy_iterator()]


# ----------------------------------------------------------------------------------------------
# Masks of every kind, images of two formats: the records hold exactly the right pixels.
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_kind", ["rgb", "palette", "ids", "ids16"])
def test_masks_become_class_ids_and_images_keep_their_pixels(tmp_path, mask_kind):
    expected = _make(tmp_path / "data", mask_kind)
    manifest = _convert(tmp_path / "data", tmp_path / "out", splits={"train": 0.5, "val": 0.5},
                        **_kwargs(mask_kind))
    seen = {}
    for split in ("train", "val"):
        seen.update(_read_back(tmp_path / "out", split))
    assert sorted(seen) == sorted(expected)
    for example_id, (image, label) in expected.items():
        got_image, got_label = seen[example_id]
        np.testing.assert_array_equal(got_label, label, err_msg=example_id)  # void is 255
        path = tmp_path / "data" / "images" / f"{example_id}.png"
        if path.exists():  # re-encoded: every pixel kept
            np.testing.assert_array_equal(got_image, image, err_msg=example_id)
        else:  # the JPEG's own bytes: decodes exactly as the file does
            jpeg = (tmp_path / "data" / "images" / f"{example_id}.jpg").read_bytes()
            np.testing.assert_array_equal(got_image, tf.io.decode_jpeg(jpeg).numpy())
    assert manifest["created"]["source"] == "folders"


def test_record_image_bytes_and_formats(tmp_path):
    _make(tmp_path / "data")
    manifest = _convert(tmp_path / "data", tmp_path / "out", **_kwargs("rgb"))
    formats = {"jpeg": 0, "png": 0}
    for split in ("train", "val"):
        for feature in _raw_records(tmp_path / "out", split):
            example_id = feature["image/filename"].bytes_list.value[0].decode()
            data = feature["image/encoded"].bytes_list.value[0]
            image_format = feature["image/format"].bytes_list.value[0].decode()
            formats[image_format] += 1
            jpeg = tmp_path / "data" / "images" / f"{example_id}.jpg"
            if image_format == "jpeg":
                assert data == jpeg.read_bytes()
            else:
                assert not jpeg.exists() and Image.open(io.BytesIO(data)).format == "PNG"
            assert Image.open(io.BytesIO(
                feature["image/segmentation/class/encoded"].bytes_list.value[0])).mode == "L"
    assert formats == {"jpeg": 5, "png": 3}  # ex_01, ex_04, ex_07 are PNG files
    splits = manifest["splits"].values()
    assert sum(s["image_formats"].get("png", 0) for s in splits) == 3
    assert sum(s["reencoded"].get("PNG", 0) for s in splits) == 3
    assert "re-encoded losslessly as PNG" in manifest["format"]


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "BMP"])
def test_other_image_kinds_are_kept_exactly(tmp_path, mode):
    expected = _make(tmp_path / "data", png_every=0)
    image_path = tmp_path / "data" / "images" / "ex_03.jpg"
    image_path.unlink()
    pixels = expected["ex_03"][0]
    if mode == "RGBA":
        _save(np.dstack([pixels, np.full(SIZE, 255, np.uint8)]), image_path.with_suffix(".png"))
    elif mode == "P":
        paletted = Image.fromarray(pixels).quantize(16)
        pixels = np.array(paletted.convert("RGB"))
        _save(paletted, image_path.with_suffix(".png"))
    elif mode == "L":
        pixels = pixels[..., 0]
        _save(pixels, image_path.with_suffix(".png"))
    else:
        _save(pixels, image_path.with_suffix(".bmp"))
    manifest = _convert(tmp_path / "data", tmp_path / "out", splits={"train": 1.0},
                        **_kwargs("rgb"))
    got = _read_back(tmp_path / "out", "train")["ex_03"][0]
    np.testing.assert_array_equal(got, pixels if pixels.ndim == 3 else np.dstack([pixels] * 3))
    assert manifest["splits"]["train"]["reencoded"] == {"BMP" if mode == "BMP" else "PNG": 1}


def test_training_input_reads_png_and_jpeg_records(tmp_path):
    _make(tmp_path / "data")
    _convert(tmp_path / "data", tmp_path / "out", splits={"train": 1.0}, **_kwargs("rgb"))
    dataset = input_pipeline.train_dataset(convert_layout.shard_pattern(tmp_path / "out", "train"),
                                           8, base_size=(6, 8), seed=0, num_classes=len(CLASSES))
    images, labels = next(iter(dataset))[:2]
    assert images.shape == (8, 6, 8, 3) and labels.shape == (8, 6, 8, 1)
    assert {0, 1, 2} <= set(np.unique(labels.numpy()).tolist()) <= {0, 1, 2, 255}


# ----------------------------------------------------------------------------------------------
# The manifest: class metadata and per-split pixel counts.
# ----------------------------------------------------------------------------------------------

def test_manifest_class_metadata_and_pixel_counts(tmp_path):
    expected = _make(tmp_path / "data")
    manifest = _convert(tmp_path / "data", tmp_path / "out", splits={"train": 0.75, "val": 0.25},
                        seed=5, **_kwargs("rgb"))
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    assert manifest["classes"] == {"names": ["background", "cat", "dog"],
                                   "palette": [[0, 0, 0], [200, 30, 30], [30, 30, 200]],
                                   "ignore_label": 255}
    for split, info in manifest["splits"].items():
        ids = [r["image/filename"].bytes_list.value[0].decode()
               for r in _raw_records(tmp_path / "out", split)]
        counts = np.zeros(256, np.int64)
        for example_id in ids:
            counts += np.bincount(expected[example_id][1].ravel(), minlength=256)
        assert info["class_pixels"] == counts[:3].tolist(), split
        assert info["ignore_pixels"] == counts[255] == len(ids) * SIZE[1]
        assert info["num_examples"] == len(ids)
    assert [info["num_examples"] for info in manifest["splits"].values()] == [6, 2]
    created = manifest["created"]
    assert created["classes_file"] == str(tmp_path / "data" / "classes.txt")
    assert created["mask_ignore_color"] == [255, 255, 255]
    assert created["split"] == {"seed": 5, "fractions": {"train": 0.75, "val": 0.25}}


def test_classes_without_colours_get_the_voc_colour_map(tmp_path):
    _make(tmp_path / "data", "ids")
    manifest = _convert(tmp_path / "data", tmp_path / "out", ignore_value=200)
    assert manifest["classes"]["names"] == ["background", "cat", "dog"]
    assert manifest["classes"]["palette"] == VOC_PALETTE[:3].tolist()
    assert manifest["created"]["mask_ignore_value"] == 200


def test_palette_masks_read_as_ids_when_classes_have_no_colours(tmp_path):
    # VOC's own SegmentationClass PNGs: palette indices are the class ids, 255 void.
    expected = _make(tmp_path / "data", "ids")
    for example_id, (_, label) in expected.items():
        mask = Image.fromarray(label, "L").convert("P")
        mask.putpalette(VOC_PALETTE.tobytes())
        _save(mask, tmp_path / "data" / "masks" / f"{example_id}.png")
    _convert(tmp_path / "data", tmp_path / "out", splits={"train": 1.0})
    seen = _read_back(tmp_path / "out", "train")
    for example_id, (_, label) in expected.items():
        np.testing.assert_array_equal(seen[example_id][1], label)


# ----------------------------------------------------------------------------------------------
# Splits: seeded, or from lists.
# ----------------------------------------------------------------------------------------------

def test_seeded_split_sizes_and_determinism():
    ids = [f"id{k:03d}" for k in range(101)]
    a = convert_folders.seeded_split(ids, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=1)
    assert [len(v) for v in a.values()] == [81, 10, 10]  # largest remainder: 80.8, 10.1, 10.1
    assert sorted(sum(a.values(), [])) == ids and all(v == sorted(v) for v in a.values())
    assert convert_folders.seeded_split(list(reversed(ids)), {"train": 0.8, "val": 0.1,
                                                              "test": 0.1}, seed=1) == a
    b = convert_folders.seeded_split(ids, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=2)
    assert b["val"] != a["val"]


def test_seeded_split_through_the_converter(tmp_path):
    _make(tmp_path / "data")
    one = _convert(tmp_path / "data", tmp_path / "one", seed=7, **_kwargs("rgb"))
    two = _convert(tmp_path / "data", tmp_path / "two", seed=7, **_kwargs("rgb"))
    ids = {split: [r["image/filename"].bytes_list.value[0] for r in _raw_records(
        tmp_path / "one", split)] for split in ("train", "val")}
    assert ids == {split: [r["image/filename"].bytes_list.value[0] for r in _raw_records(
        tmp_path / "two", split)] for split in ("train", "val")}
    assert [len(v) for v in ids.values()] == [7, 1]  # default 0.9 / 0.1 of 8
    assert one["splits"]["train"]["class_pixels"] == two["splits"]["train"]["class_pixels"]
    three = _convert(tmp_path / "data", tmp_path / "three", splits={"train": 0.5, "val": 0.25,
                                                                    "test": 0.25},
                     num_shards={"train": 2, "val": 1}, **_kwargs("rgb"))
    assert [three["splits"][s]["num_examples"] for s in ("train", "val", "test")] == [4, 2, 2]
    assert [p.name for p in sorted((tmp_path / "three").glob("test-*"))] == [
        "test-00000-of-00001.tfrecord"]  # a split other than train takes val's shard count


def test_lists_choose_the_ids(tmp_path):
    _make(tmp_path / "data")
    (tmp_path / "data" / "images" / "unlisted.jpg").write_bytes(b"no mask, not listed: fine")
    (tmp_path / "train.txt").write_text("ex_00\nex_01\n\nex_02 extra tokens\nex_00\n")
    (tmp_path / "val.txt").write_text("ex_05.jpg\n")
    manifest = _convert(tmp_path / "data", tmp_path / "out", **_kwargs("rgb"),
                        lists={"train": tmp_path / "train.txt", "val": tmp_path / "val.txt"})
    assert sorted(_read_back(tmp_path / "out", "train")) == ["ex_00", "ex_01", "ex_02"]
    assert sorted(_read_back(tmp_path / "out", "val")) == ["ex_05"]
    assert manifest["splits"]["val"]["list_files"] == {
        "include": [str(tmp_path / "val.txt")], "exclude": []}


# ----------------------------------------------------------------------------------------------
# Bad input: one message naming the file, nothing left behind.
# ----------------------------------------------------------------------------------------------

def _fails(root: Path, output_dir: Path, **kwargs) -> str:
    with pytest.raises(ConversionError) as error:
        _convert(root, output_dir, **kwargs)
    assert left_behind(output_dir) == []
    return str(error.value)


@pytest.mark.parametrize("num_workers", [1, 2])
def test_mask_of_another_size(tmp_path, num_workers):
    _make(tmp_path / "data")
    mask = tmp_path / "data" / "masks" / "ex_07.png"
    _save(Image.open(mask).crop((0, 0, SIZE[1] - 1, SIZE[0])), mask)
    message = _fails(tmp_path / "data", tmp_path / "out", num_workers=num_workers,
                     **_kwargs("rgb"))
    assert str(mask) in message and "16x12" in message and "15x12" in message


@pytest.mark.parametrize("mask_kind", ["ids", "ids16"])
def test_ids_outside_the_classes(tmp_path, mask_kind):
    _make(tmp_path / "data", mask_kind)
    mask = tmp_path / "data" / "masks" / "ex_04.png"
    values = np.array(Image.open(mask))
    values[2, :3] = [3, 255, 7]  # 255 is not void here: --ignore_value=200
    _save(Image.fromarray(values), mask)
    message = _fails(tmp_path / "data", tmp_path / "out", ignore_value=200)
    assert str(mask) in message and "outside {0..2, 200}: [3, 7, 255]" in message


@pytest.mark.parametrize("mask_kind", ["rgb", "palette"])
def test_unknown_colours(tmp_path, mask_kind):
    _make(tmp_path / "data", mask_kind)
    message = _fails(tmp_path / "data", tmp_path / "out")  # no --ignore_color: white is unknown
    assert "has colours that are no class's" in message and "(255, 255, 255)" in message
    assert "--ignore_color" in message and "ex_00.png" in message


def test_colour_mask_with_classes_without_colours(tmp_path):
    _make(tmp_path / "data")
    _write_classes(tmp_path / "data" / "classes.txt", colours=False)
    message = _fails(tmp_path / "data", tmp_path / "out")
    assert "ex_00.png is a colour (RGB) PNG" in message and "name r g b" in message


@pytest.mark.parametrize("what", ["image", "mask"])
def test_unreadable_files(tmp_path, what):
    _make(tmp_path / "data")
    path = tmp_path / "data" / ("images/ex_06.jpg" if what == "image" else "masks/ex_06.png")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    message = _fails(tmp_path / "data", tmp_path / "out", **_kwargs("rgb"))
    assert str(path) in message and "does not decode" in message


@pytest.mark.parametrize("case, expected", [
    ("transparent image", "has transparent pixels"),
    ("16-bit image", "has colour mode I;16"),
    ("JPEG mask", "masks must be PNG"),
])
def test_files_whose_content_would_be_lost(tmp_path, case, expected):
    _make(tmp_path / "data", png_every=0)
    if case == "transparent image":
        path = tmp_path / "data" / "images" / "ex_02.png"
        (tmp_path / "data" / "images" / "ex_02.jpg").unlink()
        _save(np.dstack([_image(2), np.full(SIZE, 128, np.uint8)]), path)
    elif case == "16-bit image":
        path = tmp_path / "data" / "images" / "ex_02.png"
        (tmp_path / "data" / "images" / "ex_02.jpg").unlink()
        _save(np.full(SIZE, 1000, np.uint16), path)
    else:
        path = tmp_path / "data" / "masks" / "ex_02.png"
        _save(_mask(_label(2), "rgb"), path, "JPEG")
    message = _fails(tmp_path / "data", tmp_path / "out", **_kwargs("rgb"))
    assert str(path) in message and expected in message


def test_files_that_do_not_pair_up(tmp_path):
    _make(tmp_path / "data")
    (tmp_path / "data" / "masks" / "ex_03.png").unlink()
    (tmp_path / "data" / "images" / "ex_05.jpg").unlink()
    (tmp_path / "data" / "images" / "ex_01.jpg").write_bytes(b"a second image for ex_01")
    message = _fails(tmp_path / "data", tmp_path / "out", **_kwargs("rgb"))
    assert "two files for one id: ex_01.jpg and ex_01.png" in message
    (tmp_path / "data" / "images" / "ex_01.jpg").unlink()
    message = _fails(tmp_path / "data", tmp_path / "out", **_kwargs("rgb"))
    assert "1 of 7 images in --images=" in message and "have no mask" in message
    assert "ex_03" in message
    assert "1 of 7 masks in --masks=" in message and "ex_05" in message


def test_listed_ids_without_files_and_lists_that_overlap(tmp_path):
    _make(tmp_path / "data")
    (tmp_path / "train.txt").write_text("ex_00\nex_99\n")
    (tmp_path / "val.txt").write_text("ex_00\n")
    lists = {"train": tmp_path / "train.txt", "val": tmp_path / "val.txt"}
    message = _fails(tmp_path / "data", tmp_path / "out", lists=lists, **_kwargs("rgb"))
    assert f"--val_list={tmp_path / 'val.txt'} lists ids that" in message and "ex_00" in message
    (tmp_path / "val.txt").write_text("ex_01\n")
    message = _fails(tmp_path / "data", tmp_path / "out", lists=lists, **_kwargs("rgb"))
    assert "1 of 2 train ids have no image" in message and "ex_99" in message
    message = _fails(tmp_path / "data", tmp_path / "out", lists={"val": tmp_path / "nope.txt"})
    assert f"list file {tmp_path / 'nope.txt'} does not exist (--val_list=" in message


@pytest.mark.parametrize("text, expected", [
    ("cat 1 2 3\ndog\n", "classes.txt:2: class 'dog' has no colour, but others do"),
    ("cat\ncat\n", "classes.txt:2: class name 'cat' repeats line 1"),
    ("cat 1 2 3\ndog 1 2 3\n", "classes.txt:2: colour (1, 2, 3) is also class 'cat'"),
    ("cat 1 2\n", "classes.txt:1: expected `name` or `name r g b`"),
    ("cat 1 2 300\n", "classes.txt:1: colour (1, 2, 300) has a value outside 0..255"),
    ("# only a comment\n", "lists no classes"),
    ("".join(f"c{k}\n" for k in range(256)), "lists 256 classes; at most 255"),
])
def test_classes_file_errors(tmp_path, text, expected):
    _make(tmp_path / "data", "ids")
    (tmp_path / "data" / "classes.txt").write_text(text)
    assert expected in _fails(tmp_path / "data", tmp_path / "out", ignore_value=200)


@pytest.mark.parametrize("kwargs, expected", [
    ({"ignore_value": 1}, "--ignore_value=1 is class 'cat'"),
    ({"ignore_color": (200, 30, 30)}, "--ignore_color=200,30,30 is class 'cat''s colour"),
    ({"splits": {"train": 0.5, "val": 0.5}, "lists": {"val": "v.txt"}}, "not both"),
    ({"splits": {"train": 0.99, "val": 0.01}}, "the val split is empty (8 image/mask pairs"),
    ({"classes_file": "missing.txt"}, "missing.txt: the file does not exist"),
])
def test_flag_errors(tmp_path, kwargs, expected):
    _make(tmp_path / "data")
    root = tmp_path / "data"
    classes = root / kwargs.pop("classes_file", "classes.txt")
    with pytest.raises(ConversionError) as error:
        convert.convert_folders(root / "images", root / "masks", classes, tmp_path / "out",
                                num_workers=1, progress_stream=None, **kwargs)
    assert expected in str(error.value)
    assert left_behind(tmp_path / "out") == []


@pytest.mark.parametrize("text, expected", [
    ("train:0.9,val:0.2", "add up to 1.1, not 1"),
    ("train:0.9,val", "expected split:fraction pairs"),
    ("train:1,train:0", "expected split:fraction pairs"),
    ("val-hard:1", "split name 'val-hard' may hold only letters, digits and _"),
])
def test_splits_flag_errors(text, expected):
    with pytest.raises(ConversionError, match=f"--splits={text}.*"):
        convert_folders.parse_splits(text)
    with pytest.raises(ConversionError) as error:
        convert_folders.parse_splits(text)
    assert expected in str(error.value)


def test_failed_overwrite_keeps_the_old_records(tmp_path):
    _make(tmp_path / "data")
    _convert(tmp_path / "data", tmp_path / "out", **_kwargs("rgb"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    (tmp_path / "data" / "masks" / "ex_07.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ConversionError, match="ex_07.png does not decode"):
        _convert(tmp_path / "data", tmp_path / "out", overwrite=True, num_workers=2,
                 **_kwargs("rgb"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert list(tmp_path.glob(".tmp-make_tfrecords-*")) == []


# ----------------------------------------------------------------------------------------------
# The command line, as the README types it.
# ----------------------------------------------------------------------------------------------

def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get("PYTHONPATH")])))
    return run_python(*args, env=env)


def test_tool_on_the_demo_generators_folders(tmp_path):
    raw, out = tmp_path / "shapes" / "raw", tmp_path / "shapes" / "tfrecords"
    result = _run("tools/make_demo_dataset.py", "--format=folders", f"--output_dir={raw}",
                  "--num_images=12", "--image_size=32")
    assert result.returncode == 0, result.stderr
    result = _run("tools/make_tfrecords.py", "--format=folders", f"--images={raw}/images",
                  f"--masks={raw}/masks", f"--classes={raw}/classes.txt",
                  "--ignore_color=255,255,255", "--splits=train:0.75,val:0.25",
                  f"--output_dir={out}", "--num_workers=2")
    assert result.returncode == 0, result.stderr
    assert f"Wrote train 9, val 3 examples to {out} (manifest.json)." in result.stdout
    assert "share of pixels" in result.stdout and "circle" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"]["names"] == ["background", "circle", "square"]
    # Every class present in train, and the table shows each share.
    assert all(n > 0 for n in manifest["splits"]["train"]["class_pixels"])


@pytest.mark.parametrize("header", ["", "# name r g b\n"])
def test_tool_ignores_a_utf8_bom_in_the_classes_file(tmp_path, header):
    # Notepad and other Windows editors save UTF-8 with a BOM; it is no part of the first name
    # (nor of a first comment line, which would otherwise read as a class without colour).
    _make(tmp_path / "data")
    classes = tmp_path / "data" / "classes.txt"
    classes.write_bytes(b"\xef\xbb\xbf" + (header + "".join(
        f"{name} {' '.join(map(str, colour))}\n" for name, colour in CLASSES)).encode())
    result = _run("tools/make_tfrecords.py", "--format=folders",
                  f"--images={tmp_path / 'data' / 'images'}",
                  f"--masks={tmp_path / 'data' / 'masks'}", f"--classes={classes}",
                  "--ignore_color=255,255,255", f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["classes"]["names"] == [name for name, _ in CLASSES]


@pytest.mark.parametrize("args, expected", [
    (["--format=folders", "--voc_root=x", "--images=i", "--masks=m", "--classes=c"],
     "--voc_root: only with --format=voc (this is --format=folders)"),
    (["--format=folders", "--images=i"], "--format=folders needs --masks, --classes"),
    (["--list_split=x"], "--format=voc needs --voc_root"),
    (["--voc_root=v", "--images=i", "--seed=1"], "--images, --seed: only with --format=folders"),
])
def test_tool_flag_errors(tmp_path, args, expected):
    result = _run("tools/make_tfrecords.py", *args, f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 1
    assert expected in result.stderr and "Traceback" not in result.stderr
