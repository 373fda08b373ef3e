"""fcn8s_tf/class_info.py: VOC's classes and colours, and ClassInfo for any dataset."""

import numpy as np
import pytest

from fcn8s_tf import class_info
from fcn8s_tf.class_info import IGNORE_LABEL, VOC_CLASSES, VOC_PALETTE, ClassInfo


def test_voc_facts():
    assert len(VOC_CLASSES) == class_info.NUM_CLASSES == 21
    assert VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person"
    assert IGNORE_LABEL == 255
    # The devkit's labelcolormap.m: a few entries anyone can check against VOC's PNGs.
    assert VOC_PALETTE.shape == (256, 3) and VOC_PALETTE.dtype == np.uint8
    assert VOC_PALETTE[1].tolist() == [128, 0, 0]
    assert VOC_PALETTE[15].tolist() == [192, 128, 128]
    assert VOC_PALETTE[255].tolist() == [224, 224, 192]
    assert class_info.colorize(np.array([[0, 15]], np.uint8)).tolist() == [[[0, 0, 0],
                                                                           [192, 128, 128]]]


def test_default_classes_are_voc_for_21_and_numbered_otherwise():
    assert ClassInfo.default().names == VOC_CLASSES
    three = ClassInfo.default(3)
    assert three.names == ("class_0", "class_1", "class_2")
    assert three.colours == tuple(tuple(VOC_PALETTE[i].tolist()) for i in range(3))
    assert three.ignore_label == IGNORE_LABEL


def test_palette_puts_the_class_colours_first_and_keeps_void_cream():
    classes = ClassInfo(("sky", "road"), ((10, 20, 30), (40, 50, 60)))
    palette = classes.palette
    assert palette[:2].tolist() == [[10, 20, 30], [40, 50, 60]]
    assert palette[2].tolist() == VOC_PALETTE[2].tolist()  # other indices: VOC's
    assert palette[IGNORE_LABEL].tolist() == VOC_PALETTE[IGNORE_LABEL].tolist()


def test_json_round_trip_and_the_colours_a_manifest_may_leave_out():
    classes = ClassInfo(("a", "b", "c"), ((1, 2, 3), (4, 5, 6), (7, 8, 9)))
    assert ClassInfo.from_json(classes.to_json()) == classes
    without = ClassInfo.from_json({"names": ["a", "b"]})
    assert without.colours == ClassInfo.default(2).colours


def test_names_and_colours_must_pair_up():
    with pytest.raises(ValueError, match="2 class names but 1 colours"):
        ClassInfo(("a", "b"), ((1, 2, 3),))
