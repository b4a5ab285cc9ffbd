"""The ray caster: one hit per pixel with the right depth, the nearest object wins, fences are see-through,
and frames rendered together match the geometry of each camera position."""

import numpy as np

from mlesam_core.data.deliver import deliver_camera_matrix
from mlesam_core.data.synthetic.layout import CAMERA_HEIGHT, GROUND_Y, Ground, Primitive, Scene, Shape, Surface
from mlesam_core.data.synthetic.raycast import GROUND, SKY, cast_frames

SIZE = (64, 64)
K = deliver_camera_matrix(64)  # f = 32, centre (32, 32)


def scene_with(*primitives):
    ground = Ground(-3.0, 3.0, [], None, None, np.inf, (0.0, 0.0), 0.5, (0.3, 0.3, 0.3), (0.0, 0.0))
    return Scene(ground, list(primitives))


def box(x0, x1, height, z0, z1, surface=Surface.PLAIN):
    return Primitive(Shape.BOX, (x0, x1, GROUND_Y - height, GROUND_Y, z0, z1), 0, surface, (0.5, 0.5, 0.5),
                     params=(0.15, 0.0, 0.0))


def test_a_box_ahead_gets_its_depth_and_normal_and_the_rest_is_ground_or_sky():
    g, = cast_frames(scene_with(box(-1, 1, 4, 10, 12)), np.zeros((1, 3)), K, SIZE)
    assert g.index[32, 32] == 1 and np.isclose(g.depth[32, 32], 10.0) and g.normal[32, 32].tolist() == [0, 0, -1]
    assert g.index[0, 0] == SKY and np.isinf(g.depth[0, 0])
    v = 60  # a ground row: depth = height * f / (v + 0.5 - cy)
    assert g.index[v, 2] == GROUND and np.isclose(g.depth[v, 2], CAMERA_HEIGHT * 32 / (v + 0.5 - 32), rtol=1e-5)


def test_the_nearest_object_wins_whatever_the_list_order():
    near, far = box(-1, 1, 4, 10, 11), box(-3, 3, 8, 20, 21)
    for primitives in ((near, far), (far, near)):
        g, = cast_frames(scene_with(*primitives), np.zeros((1, 3)), K, SIZE)
        assert np.isclose(g.depth[32, 32], 10.0) and np.isclose(g.depth[32, 28], 20.0)


def test_fences_let_the_view_through_between_their_wires():
    fence = box(-2, 2, 2, 8, 8.05, Surface.FENCE)
    wall = box(-3, 3, 3, 15, 15.3)
    g, = cast_frames(scene_with(fence, wall), np.zeros((1, 3)), K, SIZE)
    region = g.index[34:40, 26:38]
    assert (region == 1).any() and (region == 2).any()


def test_frames_cast_together_each_see_from_their_own_position():
    scene = scene_with(box(-1, 1, 4, 10, 12), Primitive(Shape.CYLINDER, (2.0, 14.0, 0.3, GROUND_Y - 5, GROUND_Y), 0,
                                                          Surface.METAL, (0.5, 0.5, 0.5)))
    origins = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    now, before = cast_frames(scene, origins, K, SIZE)
    assert np.isclose(now.depth[32, 32], 10.0) and np.isclose(before.depth[32, 32], 11.0)
    for g, origin in zip((now, before), origins, strict=True):
        alone, = cast_frames(scene, origin[None], K, SIZE)
        assert np.array_equal(alone.index, g.index) and np.allclose(alone.depth, g.depth, equal_nan=True)
    # the pole's side normal is horizontal and faces the camera
    pole = np.argwhere(now.index == 2)
    assert len(pole) and np.allclose(now.normal[tuple(pole[len(pole) // 2])][1], 0.0)
