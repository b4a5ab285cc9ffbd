"""Image <-> numpy conversions, checked against rosbags-image (an independent decoder) and real rclpy messages."""

import numpy as np
import pytest
from rosbags.image import image_to_cvimage

from mlesam_ros.image_conversion import (
    ImageConversionError,
    array_to_image_fields,
    depth_to_metres,
    image_msg_to_array,
    to_rgb8,
)

# encoding -> (dtype, channels)
ENCODINGS = {
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1), "mono16": (np.uint16, 1), "rgb16": (np.uint16, 3), "rgba16": (np.uint16, 4),
    "bgra16": (np.uint16, 4),
    "8UC1": (np.uint8, 1), "8UC2": (np.uint8, 2), "8UC3": (np.uint8, 3), "8UC4": (np.uint8, 4),
    "8SC1": (np.int8, 1), "16UC1": (np.uint16, 1), "16UC2": (np.uint16, 2), "16UC3": (np.uint16, 3),
    "16SC1": (np.int16, 1), "32SC1": (np.int32, 1), "32FC1": (np.float32, 1), "32FC3": (np.float32, 3),
    "64FC1": (np.float64, 1),
}


def random_image(encoding, height=5, width=7, seed=0):
    dtype, channels = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    if np.issubdtype(dtype, np.floating):
        return rng.normal(0, 100, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def header(kit):
    return kit.header(1_700_000_000_123_456_789, "camera")


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_every_encoding_decodes_like_rosbags_image(encoding, rosbags_kit):
    image = random_image(encoding)
    msg = rosbags_kit.image(image, encoding, header(rosbags_kit))
    ours = image_msg_to_array(msg)
    theirs = image_to_cvimage(msg)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, image)


@pytest.mark.parametrize("encoding", ["mono16", "16UC3", "32FC1", "64FC1", "rgba16"])
def test_big_endian_data_decodes_like_rosbags_image(encoding, rosbags_kit):
    image = random_image(encoding, seed=1)
    fields = array_to_image_fields(image, encoding)
    dtype = ENCODINGS[encoding][0]
    fields["data"] = image.astype(np.dtype(dtype).newbyteorder(">")).tobytes()
    fields["is_bigendian"] = 1
    msg = rosbags_kit.image_from_fields(header(rosbags_kit), **fields)
    ours = image_msg_to_array(msg)
    np.testing.assert_array_equal(ours, image_to_cvimage(msg))
    np.testing.assert_array_equal(ours, image)
    assert ours.dtype.isnative


@pytest.mark.parametrize("encoding", ["rgb8", "mono8", "16UC1", "32FC1", "8UC2"])
def test_row_padding_in_step_is_skipped(encoding, rosbags_kit):
    image = random_image(encoding, height=4, width=3, seed=2)
    fields = array_to_image_fields(image, encoding)
    row = fields["step"]
    padded = b"".join(fields["data"][r * row:(r + 1) * row] + b"\xee" * 5 for r in range(4))
    fields.update(step=row + 5, data=padded)
    msg = rosbags_kit.image_from_fields(header(rosbags_kit), **fields)
    np.testing.assert_array_equal(image_msg_to_array(msg), image)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_colour_images_become_rgb_like_rosbags_image(encoding, rosbags_kit):
    msg = rosbags_kit.image(random_image(encoding, seed=3), encoding, header(rosbags_kit))
    rgb = to_rgb8(image_msg_to_array(msg), encoding)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, image_to_cvimage(msg, "rgb8"))


@pytest.mark.parametrize("encoding", ["mono16", "rgb16", "bgra16"])
def test_sixteen_bit_colour_scales_to_eight_bit_within_rounding(encoding, rosbags_kit):
    msg = rosbags_kit.image(random_image(encoding, seed=4), encoding, header(rosbags_kit))
    ours = to_rgb8(image_msg_to_array(msg), encoding).astype(int)
    theirs = image_to_cvimage(msg, "rgb8").astype(int)  # rosbags-image truncates, we round
    assert np.abs(ours - theirs).max() <= 1


@pytest.mark.parametrize("encoding", ["rgb8", "mono16", "32FC1", "16UC3"])
def test_rclpy_messages_decode_like_rosbags_messages(encoding, rclpy_kit, rosbags_kit):
    image = random_image(encoding, seed=5)
    live = rclpy_kit.image(image, encoding, header(rclpy_kit))
    stored = rosbags_kit.image(image, encoding, header(rosbags_kit))
    assert type(live).__module__.startswith("sensor_msgs")
    np.testing.assert_array_equal(image_msg_to_array(live), image_msg_to_array(stored))


def test_depth_millimetres_become_metres_with_zero_invalid():
    mm = np.array([[0, 1500], [65535, 250]], dtype=np.uint16)
    metres = depth_to_metres(mm, "16UC1")
    assert metres.dtype == np.float32
    assert np.isnan(metres[0, 0])
    np.testing.assert_allclose(metres[[0, 1, 1], [1, 0, 1]], [1.5, 65.535, 0.25], rtol=1e-6)


def test_float_depth_marks_nan_and_both_infinities_and_nonpositive_invalid():
    depth = np.array([[np.nan, -np.inf, np.inf], [0.0, -2.0, 3.25]], dtype=np.float32)
    metres = depth_to_metres(depth, "32FC1")
    assert np.isnan(metres.reshape(-1)[:5]).all()
    assert metres[1, 2] == np.float32(3.25)


def test_depth_refuses_colour_encodings():
    with pytest.raises(ImageConversionError, match="single-channel"):
        depth_to_metres(np.zeros((2, 2, 3), np.uint8), "rgb8")


@pytest.mark.parametrize("change, problem", [
    ({"encoding": "yuv422"}, "unsupported image encoding 'yuv422'"),
    ({"step": 8}, "step 8 is shorter"),
    ({"height": 9}, "data holds"),
    ({"width": 0}, "empty image"),
])
def test_malformed_messages_raise_errors_naming_the_problem(change, problem, rosbags_kit):
    fields = array_to_image_fields(random_image("rgb8"), "rgb8")
    fields.update(change)
    msg = rosbags_kit.image_from_fields(header(rosbags_kit), **fields)
    with pytest.raises(ImageConversionError, match=problem):
        image_msg_to_array(msg)


def test_encoding_an_array_checks_dtype_and_channels():
    with pytest.raises(ImageConversionError, match="32FC1 needs 1-channel float32"):
        array_to_image_fields(np.zeros((2, 2), np.uint16), "32FC1")
    with pytest.raises(ImageConversionError, match="rgb8 needs 3-channel"):
        array_to_image_fields(np.zeros((2, 2, 4), np.uint8), "rgb8")


@pytest.mark.parametrize("encoding", ["32SC1", "16UC3", "32FC1", "mono16"])
def test_a_big_endian_array_encodes_to_a_big_endian_message_as_in_cv_bridges_test_endianness(encoding, rosbags_kit,
                                                                                            rclpy_kit):
    image = random_image(encoding, seed=4)
    big = image.astype(image.dtype.newbyteorder(">"))
    for kit in (rosbags_kit, rclpy_kit):
        msg = kit.image(big, encoding, header(kit))
        assert msg.is_bigendian
        decoded = image_msg_to_array(msg)
        assert decoded.dtype.isnative
        np.testing.assert_array_equal(decoded, image)
        np.testing.assert_array_equal(image_to_cvimage(msg), image)
