"""The synthetic demo dataset: deterministic, in the real layout, readable by the converter."""


import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from PIL import Image

from fcn8s_tf.class_info import IGNORE_LABEL, VOC_PALETTE
from fcn8s_tf.data import demo_data
from fcn8s_tf.data import records
from fcn8s_tf.data.convert import convert
from fcn8s_tf.data.convert import folders as convert_folders

SMALL = dict(num_train=16, num_val=6, image_size=(64, 80))
ALLOWED = set(demo_data.DEMO_CLASSES) | {0}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo")
    return output_dir, demo_data.make_demo_dataset(output_dir, seed=3, **SMALL)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _ids(path):
    return path.read_text().split()


def test_same_seed_same_bytes_other_seed_other_images(demo, tmp_path):
    output_dir, _ = demo
    demo_data.make_demo_dataset(tmp_path / "again", seed=3, **SMALL)
    assert _files(tmp_path / "again") == _files(output_dir)
    demo_data.make_demo_dataset(tmp_path / "other", seed=4, **SMALL)
    other = _files(tmp_path / "other")
    image = "VOCdevkit/VOC2012/JPEGImages/demo_000000.jpg"
    assert other[image] != _files(output_dir)[image]


def test_rewrites_its_own_output_but_nothing_else(demo, tmp_path):
    output_dir, _ = demo
    before = _files(output_dir)
    demo_data.make_demo_dataset(output_dir, seed=3, **SMALL)  # `make demo` runs it again
    assert _files(output_dir) == before
    (tmp_path / "foreign" / "VOCdevkit").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="DEMO_DATASET.txt"):
        demo_data.make_demo_dataset(tmp_path / "foreign", seed=3, **SMALL)


def test_layout_and_formats(demo):
    _, roots = demo
    voc, sbd = roots["voc_root"], roots["sbd_root"]
    voc_train = _ids(voc / "ImageSets/Segmentation/train.txt")
    val = _ids(voc / "ImageSets/Segmentation/val.txt")
    sbd_ids = _ids(sbd / "train.txt") + _ids(sbd / "val.txt")
    assert len(val) == 6
    # The overlaps that exercise the converter's rules.
    assert set(voc_train) & set(sbd_ids), "a VOC train id with an SBD .mat (precedence)"
    assert set(val) & set(_ids(sbd / "train.txt")), "a VOC val id in SBD train (exclusion)"
    assert not set(val) & set(_ids(sbd / "val.txt"))

    for example_id in voc_train + val:
        image = Image.open(voc / "JPEGImages" / f"{example_id}.jpg")
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (80, 64)
        label = Image.open(voc / "SegmentationClass" / f"{example_id}.png")
        assert label.mode == "P"
        np.testing.assert_array_equal(
            np.array(label.getpalette(), np.uint8).reshape(-1, 3), VOC_PALETTE)
        values = set(np.unique(np.array(label)).tolist())
        assert IGNORE_LABEL in values, "VOC labels carry the 255 boundary band"
        assert values - {IGNORE_LABEL} <= ALLOWED

    for example_id in sbd_ids:
        assert (sbd / "img" / f"{example_id}.jpg").is_file()
        path = sbd / "cls" / f"{example_id}.mat"
        gtcls = scipy.io.loadmat(path)["GTcls"]
        assert gtcls.dtype.names == ("Boundaries", "Segmentation", "CategoriesPresent")
        segmentation = scipy.io.loadmat(path, struct_as_record=False,
                                        squeeze_me=True)["GTcls"].Segmentation
        assert segmentation.dtype == np.uint8 and segmentation.shape == (64, 80)
        assert set(np.unique(segmentation).tolist()) <= ALLOWED, "SBD has no 255"
        # SBD-only ids have their image under SBD img/ alone: the converter's image fallback.
        if example_id not in voc_train + val:
            assert not (voc / "JPEGImages" / f"{example_id}.jpg").exists()


def test_converter_reads_it(demo, tmp_path):
    _, roots = demo
    manifest = convert.convert(roots["voc_root"], roots["sbd_root"], tmp_path / "records",
                               num_shards={"train": 2, "val": 1}, num_workers=1,
                               progress_stream=None)
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert train["num_examples"] == 16 and val["num_examples"] == 6
    assert train["label_source"] == {"voc": 4, "sbd": 12}
    assert val["label_source"] == {"voc": 6, "sbd": 0}
    names = manifest["classes"]["names"]
    assert train["ignore_pixels"] > 0
    assert all(train["class_pixels"][names.index(name)] > 0
               for name in ("aeroplane", "cat", "person"))

    files = [str(tmp_path / "records" / s["file"]) for s in train["shards"]]
    for image, label, _ in tf.data.TFRecordDataset(files).map(records.decode_example):
        assert image.shape == (64, 80, 3)
        assert set(np.unique(label.numpy()).tolist()) <= ALLOWED | {IGNORE_LABEL}


def test_boundary_band_is_three_pixels_across():
    label = np.zeros((6, 10), np.uint8)
    label[:, 5:] = 8
    banded = demo_data.add_boundary_band(label)
    for row in banded:
        np.testing.assert_array_equal(np.flatnonzero(row == IGNORE_LABEL), [4, 5, 6])
    np.testing.assert_array_equal(banded[:, :4], 0)
    np.testing.assert_array_equal(banded[:, 7:], 8)


def test_content_is_easy_to_learn():
    """Large objects, and each class recognisable by its colour alone."""
    rng = np.random.default_rng(0)
    foreground = []
    for _ in range(40):
        image, label = demo_data.render_example(rng, 160, 160)
        foreground.append(np.mean(label > 0))
        for class_id in np.unique(label[label > 0]):
            mean_colour = image[label == class_id].mean(axis=0)
            expected = np.asarray(demo_data.DEMO_CLASSES[class_id][1])
            # The class's dominant channel dominates the pixels of that class.
            assert np.argmax(mean_colour) == np.argmax(expected)
            assert np.abs(mean_colour - expected).max() < 60
        background = image[label == 0].astype(float)
        if background.size:
            # Desaturated: the channels of the background stay close together.
            assert np.abs(background.mean(axis=0) - background.mean()).max() < 20
    assert 0.1 < min(foreground) and max(foreground) <= 0.65
    assert 0.25 <= np.mean(foreground) <= 0.6


# ----------------------------------------------------------------------------------------------
# --format=folders: what a user with their own data has.
# ----------------------------------------------------------------------------------------------

FOLDERS = dict(num_images=12, image_size=(40, 48))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("folders")
    return output_dir, demo_data.make_folders_dataset(output_dir, seed=3, **FOLDERS)


def test_folders_same_seed_same_bytes(folders, tmp_path):
    output_dir, _ = folders
    demo_data.make_folders_dataset(tmp_path / "again", seed=3, **FOLDERS)
    assert _files(tmp_path / "again") == _files(output_dir)
    demo_data.make_folders_dataset(output_dir, seed=3, **FOLDERS)  # replaces its own files
    assert _files(output_dir) == _files(tmp_path / "again")
    (tmp_path / "foreign" / "masks").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="DEMO_DATASET.txt"):
        demo_data.make_folders_dataset(tmp_path / "foreign", **FOLDERS)


def test_folders_layout_and_formats(folders):
    _, paths = folders
    classes, coloured = convert_folders.read_classes_file(paths["classes"])
    assert coloured and classes.names == ("background", "circle", "square")
    colours = {tuple(c) for c in classes.palette} | {demo_data.FOLDER_VOID_COLOUR}
    images = sorted(p.name for p in paths["images"].iterdir())
    assert len(images) == 12 and sum(name.endswith(".png") for name in images) == 3
    for name in images:
        image = Image.open(paths["images"] / name)
        assert image.mode == "RGB" and image.size == (48, 40)
        mask = Image.open(paths["masks"] / (name.rsplit(".", 1)[0] + ".png"))
        assert mask.mode == "RGB" and mask.size == (48, 40)
        assert {tuple(c) for c in np.unique(np.array(mask).reshape(-1, 3), axis=0)} <= colours


def test_converter_reads_the_folders(folders, tmp_path):
    _, paths = folders
    manifest = convert.convert_folders(
        paths["images"], paths["masks"], paths["classes"], tmp_path / "records",
        ignore_color=demo_data.FOLDER_VOID_COLOUR, splits={"train": 0.75, "val": 0.25},
        num_workers=1, progress_stream=None)
    train = manifest["splits"]["train"]
    assert train["num_examples"] == 9 and manifest["splits"]["val"]["num_examples"] == 3
    assert all(n > 0 for n in train["class_pixels"]) and train["ignore_pixels"] > 0
    assert manifest["classes"]["palette"] == [[0, 0, 0], [0, 192, 0], [0, 0, 192]]
