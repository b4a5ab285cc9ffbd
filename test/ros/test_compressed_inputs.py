"""CompressedImage inputs: bytes made the way image_transport's compressed and compressedDepth publishers make
them (OpenCV imencode, their format strings, the 12-byte ConfigHeader), decoded by the pipeline's decoder."""

import struct

import cv2
import numpy as np
import pytest

from mlesam_ros.compressed import compressed_to_array, encode_compressed, encode_compressed_depth, parse_format
from mlesam_ros.image_conversion import ImageConversionError
from mlesam_ros.model_inputs import InputError
from mlesam_ros.params import load_segment_config

H, W = 24, 32


def smooth_rgb(seed=0):
    """A smooth colour image (JPEG keeps it within a few levels) with distinct channels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 255 // W, yy * 255 // H, (xx + yy) * 127 // (H + W) + 60], axis=2)
    return np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)


def published(kit, fmt, data):
    return kit.compressed_image(fmt, data, kit.header(1_000_000_000, "camera"))


def publisher_compressed(image_rgb, codec, encoding="rgb8"):
    """compressed_image_transport: colour goes through cv_bridge to bgr8, then cv::imencode with the publisher's
    default parameters (jpeg_quality 95, png_level 3)."""
    bgr = image_rgb[:, :, ::-1] if encoding.startswith("rgb") else image_rgb
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if codec == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, data = cv2.imencode(".jpg" if codec == "jpeg" else ".png", np.ascontiguousarray(bgr), params)
    assert ok
    return f"{encoding}; {codec} compressed bgr{8 * image_rgb.dtype.itemsize}", data.tobytes()


def publisher_compressed_depth_32f(depth, depth_max=10.0, depth_quantization=100.0):
    """compressed_depth_image_transport's 32FC1 branch, written out independently of the project's encoder."""
    quant_a = np.float32(depth_quantization * (depth_quantization + 1.0))
    quant_b = np.float32(1.0 - quant_a / np.float32(depth_max))
    inverse = np.zeros(depth.shape, np.uint16)
    for index, d in np.ndenumerate(depth.astype(np.float32)):
        if d < depth_max:  # NaN compares false: 0
            inverse[index] = int(quant_a / d + quant_b)  # float -> unsigned short truncates
    ok, png = cv2.imencode(".png", inverse, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    assert ok
    return "32FC1; compressedDepth png", struct.pack("<iff", 0, quant_a, quant_b) + png.tobytes(), inverse


def decode(sensor, msg, size):
    """`msg` decoded as the pipeline decodes `sensor` in a frame of `size` (tiny model: nothing is resized)."""
    from mlesam_ros.model_inputs import InputDecoder, SensorMessage

    config = load_segment_config(None, ["model.config=config/model/mlesam_tiny.yaml", "depth.encoding=depth"])
    decoder = InputDecoder(config, model_size=(128, 128))
    frame = decoder.frame_size(size, "the test's size")
    return decoder.decode_image(sensor, decoder.read(sensor, SensorMessage.of(msg)), frame)


@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_rgb8_sent_as_compressed_bgr8_decodes_to_the_original_rgb(codec, rosbags_kit, rclpy_kit):
    image = smooth_rgb()
    for kit in (rosbags_kit, rclpy_kit):
        decoded = decode("rgb", published(kit, *publisher_compressed(image, codec)), (H, W))
        if codec == "png":
            np.testing.assert_array_equal(decoded, image)
        else:  # lossy, but the channel order must be right: every channel within a few levels
            assert np.abs(decoded.astype(int) - image).max() <= 12
            assert np.abs(decoded.astype(int) - image[:, :, ::-1]).max() > 50


def test_bgr8_rgb16_mono8_and_old_style_formats_keep_their_colour_order(rosbags_kit):
    image = smooth_rgb(1)
    bgr_fmt, bgr_data = publisher_compressed(image[:, :, ::-1].copy(), "png", encoding="bgr8")
    np.testing.assert_array_equal(decode("rgb", published(rosbags_kit, bgr_fmt, bgr_data), (H, W)), image)

    wide = image.astype(np.uint16) * 257
    fmt, data = publisher_compressed(wide, "png", encoding="rgb16")
    assert fmt == "rgb16; png compressed bgr16"
    np.testing.assert_array_equal(decode("rgb", published(rosbags_kit, fmt, data), (H, W)), image)

    grey = image[:, :, 0].copy()
    ok, png = cv2.imencode(".png", grey)
    decoded = decode("rgb", published(rosbags_kit, "mono8; png compressed ", png.tobytes()), (H, W))
    np.testing.assert_array_equal(decoded, np.repeat(grey[:, :, None], 3, axis=2))

    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]))  # a driver's own JPEG: "jpeg"
    decoded = decode("rgb", published(rosbags_kit, "jpeg", jpeg.tobytes()), (H, W))
    assert np.abs(decoded.astype(int) - image).max() <= 12


def test_the_projects_encoder_writes_what_the_plugin_writes():
    image = smooth_rgb(2)
    assert encode_compressed(image, "rgb8", "png") == publisher_compressed(image, "png")
    depth = np.random.default_rng(0).uniform(0.5, 12.0, (H, W)).astype(np.float32)
    depth[0, :4] = np.nan
    fmt, data, _ = publisher_compressed_depth_32f(depth)
    ours_fmt, ours = encode_compressed_depth(depth, "32FC1")
    assert ours_fmt == fmt and ours[:12] == data[:12]
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(ours[12:], np.uint8), cv2.IMREAD_UNCHANGED),
                                  cv2.imdecode(np.frombuffer(data[12:], np.uint8), cv2.IMREAD_UNCHANGED))


def test_compressed_depth_16uc1_is_lossless_millimetres(rosbags_kit, rclpy_kit):
    millimetres = np.random.default_rng(3).integers(0, 9000, (H, W)).astype(np.uint16)
    ok, png = cv2.imencode(".png", millimetres)
    # the plugin leaves depthParam uninitialised for 16-bit depth: whatever is there must not matter
    data = struct.pack("<iff", 0, 123.0, -7.5) + png.tobytes()
    for kit in (rosbags_kit, rclpy_kit):
        array, encoding = compressed_to_array(published(kit, "16UC1; compressedDepth png", data))
        assert encoding == "16UC1"
        np.testing.assert_array_equal(array, millimetres)


def test_compressed_depth_32fc1_inverts_the_quantised_inverse_depth(rosbags_kit):
    depth = np.random.default_rng(4).uniform(0.5, 12.0, (H, W)).astype(np.float32)
    depth[2, :5] = np.nan
    fmt, data, inverse = publisher_compressed_depth_32f(depth)
    array, encoding = compressed_to_array(published(rosbags_kit, fmt, data))
    assert encoding == "32FC1" and array.dtype == np.float32
    invalid = inverse == 0
    assert np.isnan(array[invalid]).all() and invalid[2, :5].all() and (invalid == ~(depth < 10.0)).all()
    quant_a, quant_b = struct.unpack_from("<ff", data, 4)
    np.testing.assert_allclose(array[~invalid], quant_a / (inverse[~invalid] - np.float32(quant_b)), rtol=1e-6)
    # quantisation error of inverse depth: d^2 / A per step, < 1.5 cm at 10 m with the plugin's defaults
    assert np.abs(array[~invalid] - depth[~invalid]).max() < 0.015


@pytest.mark.parametrize("fmt, data, problem", [
    ("rgb8; jpeg compressed bgr8", b"\xff\xd8\xff\xe0 not a jpeg", "undecodable jpeg"),
    ("rgb8; jpeg compressed bgr8", b"", "undecodable jpeg"),
    ("rgb8; webp compressed bgr8", b"\x00", "no jpeg, png or tiff codec"),
    ("32FC1; compressedDepth png", b"\x00" * 12, "not more than its 12-byte ConfigHeader"),
    ("32FC1; compressedDepth png", struct.pack("<iff", 7, 1.0, 0.0) + b"x", "compression format 7"),
    ("32FC1; compressedDepth rvl", struct.pack("<iff", 0, 1.0, 0.0) + b"x", "codec 'rvl' is not supported"),
    ("8UC3; compressedDepth png", struct.pack("<iff", 0, 1.0, 0.0) + b"x", "only writes 16UC1 and 32FC1"),
])
def test_broken_compressed_messages_raise_naming_the_problem(fmt, data, problem, rosbags_kit):
    with pytest.raises(ImageConversionError, match=problem):
        compressed_to_array(published(rosbags_kit, fmt, data))


def test_a_compressed_depth_header_that_lies_is_refused(rosbags_kit):
    ok, png8 = cv2.imencode(".png", np.full((H, W), 7, np.uint8))
    with pytest.raises(ImageConversionError, match="uint8 data .* expected single-channel 16-bit"):
        compressed_to_array(published(rosbags_kit, "16UC1; compressedDepth png",
                                      struct.pack("<iff", 0, 0, 0) + png8.tobytes()))
    ok, png16 = cv2.imencode(".png", np.full((H, W), 700, np.uint16))
    with pytest.raises(ImageConversionError, match=r"depthParam \(nan, 0.0\)"):
        compressed_to_array(published(rosbags_kit, "32FC1; compressedDepth png",
                                      struct.pack("<iff", 0, float("nan"), 0.0) + png16.tobytes()))
    with pytest.raises(InputError, match=f"size {W}x{H} differs from the frame's {W}x{H + 1}"):
        decode("depth", published(rosbags_kit, "16UC1; compressedDepth png",
                                  struct.pack("<iff", 0, 0, 0) + png16.tobytes()), (H + 1, W))


def test_format_strings_parse_as_the_subscribers_read_them():
    assert parse_format("rgb8; jpeg compressed bgr8").file_is_bgr
    assert not parse_format("rgb8; png compressed rgb8").file_is_bgr
    assert parse_format("jpeg").file_is_bgr and parse_format("jpeg").encoding is None
    depth = parse_format("32FC1; compressedDepth")  # older compressedDepth publishers: png, no codec named
    assert depth.depth and depth.codec == "png" and depth.encoding == "32FC1"


def test_an_undecodable_camera_jpeg_makes_rgb_absent_and_the_frame_is_still_answered(tiny_segmenter, rosbags_kit,
                                                                                       caplog):
    from mlesam_ros.pipeline import SegmentationPipeline

    config = load_segment_config(None, ["model.config=config/model/mlesam_tiny.yaml", "classes=deliver",
                                        "modalities=[rgb,depth]", "depth.encoding=depth",
                                        "sensors.rgb.topic=/camera/image_raw/compressed",
                                        "sensors.depth.topic=/depth/image_raw/compressedDepth"])
    assert config.camera_info_topic == "/camera/camera_info"  # beside the compressed topic's image topic
    assert config.input_type("rgb") == config.input_type("depth") == "sensor_msgs/msg/CompressedImage"
    pipeline = SegmentationPipeline(config, tiny_segmenter, clock=lambda: 0.0)
    millimetres = np.random.default_rng(5).integers(500, 9000, (H, W)).astype(np.uint16)
    depth_fmt, depth_data = encode_compressed_depth(millimetres, "16UC1")
    good_fmt, good_data = publisher_compressed(smooth_rgb(), "jpeg")
    results = []
    for i, data in enumerate([good_data, b"\xff\xd8 truncated", good_data]):
        header = rosbags_kit.header(1_000_000_000 + i * 100_000_000, "camera")
        for sensor, msg in (("rgb", rosbags_kit.compressed_image(good_fmt, data, header)),
                            ("depth", rosbags_kit.compressed_image(depth_fmt, depth_data, header))):
            results += [pipeline.process(f, now=i / 10) for f in pipeline.add(sensor, msg, received=i / 10)]
    results += [pipeline.process(f) for f in pipeline.drain()]
    assert [r.used for r in results] == [("rgb", "depth"), ("depth",), ("rgb", "depth")]
    assert all(r.labels is not None and r.labels.shape == (H, W) for r in results)
    assert results[1].status["rgb"] == "invalid" and "undecodable jpeg" in results[1].errors["rgb"]
    assert "/camera/image_raw/compressed (rgb): undecodable jpeg" in caplog.text
