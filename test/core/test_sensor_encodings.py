"""Sensor encodings shared by the data sets, the generator and the ROS pipeline."""

import logging

import numpy as np
import pytest
import torch

from mlesam_core.sensors import depth_to_hha, depth_to_image, lidar_image_to_uint8, project_points, render_event_frame

K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
# LiDAR frame: x forward, y left, z up -> camera optical frame: x right, y down, z forward
CAM_FROM_LIDAR = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def test_projection_lands_on_the_expected_pixel_and_nearest_point_wins():
    points = np.array([[10.0, 0.0, 0.0], [20.0, 0.0, 0.0], [0.5, 0.0, 0.0], [-5.0, 0.0, 0.0]])
    image = project_points(points, np.array([7.0, 9.0, 1.0, 1.0]), CAM_FROM_LIDAR, K, (48, 64))
    hit = np.argwhere(image[:, :, 0] > 0)
    assert hit.tolist() == [[24, 32]]  # principal point; the 0.5 m and behind-camera points are dropped
    assert image[24, 32].tolist() == [10.0, 7.0, 0.0]  # nearest of the two wins


def test_projection_height_and_offset_pixel():
    # 10 m ahead, 1 m left, 2 m up: u = 32 + 50 * (-(1)/10) = 27, v = 24 + 50 * (-(2)/10) = 14
    image = project_points(np.array([[10.0, 1.0, 2.0]]), None, CAM_FROM_LIDAR, K, (48, 64))
    assert image[14, 27, 2] == pytest.approx(2.0)
    assert image[14, 27, 0] == pytest.approx(np.sqrt(105.0))


def test_projection_rejects_bad_shapes():
    with pytest.raises(ValueError, match="points: expected shape"):
        project_points(np.zeros((3, 2)), None, CAM_FROM_LIDAR, K, (4, 4))
    with pytest.raises(ValueError, match="cam_from_lidar"):
        project_points(np.zeros((3, 3)), None, np.eye(3), K, (4, 4))


def test_lidar_uint8_keeps_empty_pixels_zero():
    image = np.zeros((2, 2, 3), dtype=np.float32)
    image[0, 0] = [50.0, 255.0, -3.0]
    out = lidar_image_to_uint8(image)
    assert out[0, 0].tolist() == [128, 255, 1] and (out[1:] == 0).all() and (out[0, 1] == 0).all()


def test_depth_encodings_mark_invalid_depth_as_zero():
    depth = np.full((8, 8), 10.0, dtype=np.float32)
    depth[0, 0], depth[0, 1], depth[0, 2] = 0.0, np.nan, np.inf
    img = depth_to_image(depth)
    assert img[0, :3].tolist() == [0, 0, 0] and img[4, 4] == round(10 / 100 * 255)
    hha = depth_to_hha(depth, K)
    assert (hha[0, :3] == 0).all() and (hha[4, 4] > 0).all()
    # a fronto-parallel wall: normal is horizontal -> angle to gravity 90 degrees -> top of the scale
    assert hha[4, 4, 2] == 255


def test_hha_ground_plane_is_flat_and_low():
    h, w = 48, 64
    vs = np.arange(h, dtype=np.float32)[:, None].repeat(w, 1)
    with np.errstate(divide="ignore"):
        depth = np.where(vs > 24, 1.5 * 50.0 / (vs - 24), 0.0)  # ground 1.5 m below a level camera
    hha = depth_to_hha(depth.astype(np.float32), K)
    ground = hha[30:46, 5:60]
    assert ground[:, :, 2].max() <= 3  # normal parallel to gravity: angle ~ 0
    assert np.abs(ground[:, :, 1].astype(int) - round(1 / 21 * 254 + 1)).max() <= 1  # height ~ 0 m


def test_event_frame_counts_polarities():
    frame = render_event_frame(np.array([1, 1, 2, 9]), np.array([0, 0, 1, 0]), np.array([1, 1, 0, 1]), (2, 3))
    assert frame[0, 1].tolist() == [2, 0, 0] and frame[1, 2].tolist() == [0, 1, 0] and frame.sum() == 3
    scaled = render_event_frame(np.array([0]), np.array([0]), np.array([-1]), (1, 1), count_scale=64)
    assert scaled[0, 0].tolist() == [0, 64, 0]


def _street_depth(shape, seed=0):
    """A ground plane below the horizon, a far wall above, noise, holes, NaN and Inf."""
    rng = np.random.default_rng(seed)
    h, w = shape
    rows = np.arange(h)[:, None]
    depth = np.where(rows > h / 2, 1.5 * 500 / np.maximum(rows - h / 2, 1), 30.0) + rng.normal(0, 0.05, shape)
    depth = depth.astype(np.float32)
    depth[rng.random(shape) < 0.05] = 0
    depth[0, 0], depth[1, 1], depth[2, 2] = np.nan, np.inf, -np.inf
    return depth


@pytest.mark.parametrize("shape", [(64, 96), (480, 640)])
def test_device_hha_computes_the_numpy_hha(shape):
    from mlesam_core.sensors import hha_tensor

    depth = _street_depth(shape)
    K = np.array([[500.0, 0, shape[1] / 2], [0, 500.0, shape[0] / 2], [0, 0, 1]])
    reference = depth_to_hha(depth, K)
    fast = hha_tensor(torch.from_numpy(depth), (500.0, 500.0, shape[1] / 2, shape[0] / 2)).numpy()
    difference = np.abs(reference.astype(int) - fast.astype(int))
    assert difference.max() <= 1  # float rounding of arccos / division may move a value across .5
    assert (difference > 0).mean() < 1e-4
    assert (fast[~(np.isfinite(depth) & (depth > 0))] == 0).all()
    assert reference.std() > 10  # a real encoding, not a constant


def test_hha_left_on_the_device_is_the_device_hha_as_a_tensor():
    from mlesam_core.sensors import depth_to_hha_on, hha_tensor

    depth = _street_depth((48, 64))
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    on = depth_to_hha_on(depth, K, "cpu")
    assert isinstance(on, torch.Tensor) and on.dtype == torch.uint8 and on.shape == (48, 64, 3)
    torch.testing.assert_close(on, hha_tensor(torch.from_numpy(depth), (50.0, 50.0, 32.0, 24.0)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="intrinsics: expected K"):
        depth_to_hha_on(depth, np.eye(2), "cpu")


def test_compiled_hha_computes_the_numpy_hha():
    # the real inductor build: a few seconds on 2 cores
    from mlesam_core.sensors import CompiledHHA

    depth = _street_depth((64, 96))
    K = np.array([[500.0, 0, 48], [0, 500.0, 32], [0, 0, 1]])
    compiled = CompiledHHA()
    fast = compiled(depth, K)
    difference = np.abs(depth_to_hha(depth, K).astype(int) - fast.astype(int))
    assert fast.dtype == np.uint8 and fast.shape == (64, 96, 3)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    assert compiled._compiled is not None  # it really ran compiled
    with pytest.raises(ValueError, match="intrinsics: expected K"):
        compiled(depth, np.eye(2))


@pytest.mark.parametrize("where", ["setup", "first call"])
def test_compiled_hha_falls_back_to_numpy_with_a_warning(monkeypatch, caplog, where):
    from mlesam_core.sensors import CompiledHHA

    def unavailable(*args, **kwargs):
        raise RuntimeError("no working C++ compiler")

    monkeypatch.setattr(torch, "compile", unavailable if where == "setup" else lambda fn, **kw: unavailable)
    depth = _street_depth((48, 64))
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    with caplog.at_level(logging.WARNING, logger="mlesam_core.sensors.depth"):
        compiled = CompiledHHA()
        result = compiled(depth, K)
    assert "HHA: torch.compile is unavailable here (RuntimeError: no working C++ compiler)" in caplog.text
    np.testing.assert_array_equal(result, depth_to_hha(depth, K))
    assert compiled._compiled is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_hha_on_a_cuda_device_equals_the_cpu_hha():
    depth = _street_depth((480, 640))
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    from mlesam_core.sensors import DepthEncoding, hha_encoder

    on_gpu = hha_encoder("cuda")(depth, K, DepthEncoding()).cpu().numpy()
    difference = np.abs(depth_to_hha(depth, K).astype(int) - on_gpu.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-4


@pytest.mark.parametrize("size", [(24, 32), (480, 640)])  # dense hits (per-pixel minima), sparse (sorted hits)
def test_uint8_projection_equals_the_float_image_encoded_and_both_z_buffers_agree(size, monkeypatch):
    from mlesam_core.sensors import lidar, lidar_image_to_uint8, project_points, project_points_uint8

    rng = np.random.default_rng(3)
    points = rng.uniform([-20, -20, -2], [20, 20, 5], (5000, 3))
    points[1::2] = points[0::2]  # exact duplicates, other intensities: equal depths, the first in input order wins
    intensity = rng.uniform(0, 255, 5000)
    cam_from_lidar = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    k = np.array([[size[1] / 2, 0, size[1] / 2], [0, size[1] / 2, size[0] / 2], [0, 0, 1]])
    image = project_points(points, intensity, cam_from_lidar, k, size)
    expected = lidar_image_to_uint8(image)
    hits = image[:, :, 0] > 0
    assert hits.sum() > 50
    np.testing.assert_array_equal(project_points_uint8(points, intensity, cam_from_lidar, k, size), expected)
    first_wins = np.isin(image[hits][:, 1], intensity[0::2].astype(np.float32))
    assert first_wins.all()  # every hit pixel shows the earlier of two equal points
    for fraction in (0, 10**9):  # force each z-buffer: per-pixel minima, sorted hits
        monkeypatch.setattr(lidar, "SORT_BELOW_HIT_FRACTION", fraction)
        np.testing.assert_array_equal(project_points(points, intensity, cam_from_lidar, k, size), image)
        np.testing.assert_array_equal(project_points_uint8(points, intensity, cam_from_lidar, k, size), expected)
