"""Static transforms from tf2_msgs/TFMessage (/tf_static) as 4x4 matrices, looked up through intermediate frames.

tf2's conventions: a TransformStamped with `header.frame_id` = parent and `child_frame_id` = child maps points
of the child frame into the parent frame (p_parent = R p_child + t); `lookup(target, source)` returns
target <- source, chaining through any frames between them (e.g. camera <- base_link <- lidar). The replay
reads /tf_static from the bag into a `TransformTree`; the node uses tf2_ros when it is importable, else the same
tree fed by its /tf_static subscription (both answer `lookup`). Works on rclpy and rosbags messages alike.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

MAX_CHAIN = 64  # frames between a frame and its tree's root, at most (a longer chain is a cycle)


class TransformLookup(Protocol):
    """What the input decoder asks for a point cloud: target <- source, or None when unknown."""

    def lookup(self, target: str, source: str) -> np.ndarray | None:
        """4x4 target <- source."""

    def available(self) -> bool:
        """Whether any transform is known (then a missing one is an error, not a reason to use the parameter)."""


def transform_matrix(translation: Any, rotation: Any) -> np.ndarray:
    """4x4 homogeneous matrix of a geometry_msgs Vector3 translation and (x, y, z, w) Quaternion rotation."""
    x, y, z, w = (float(rotation.x), float(rotation.y), float(rotation.z), float(rotation.w))
    norm = np.sqrt(x * x + y * y + z * z + w * w)
    if not np.isfinite(norm) or norm < 1e-9:
        raise ValueError(f"rotation quaternion ({x}, {y}, {z}, {w}) has no direction")
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    matrix = np.eye(4)
    matrix[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    matrix[:3, 3] = [float(translation.x), float(translation.y), float(translation.z)]
    return matrix


def rotation_quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) unit quaternion of a 3x3 rotation matrix (w >= 0)."""
    r = np.asarray(rotation, dtype=np.float64)
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = ((r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s)
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k])
        v = [0.0, 0.0, 0.0]
        v[i], v[j], v[k] = 0.25 * s, (r[j, i] + r[i, j]) / s, (r[k, i] + r[i, k]) / s
        q = (*v, (r[k, j] - r[j, k]) / s)
    unit = np.asarray(q) / np.linalg.norm(q)
    if unit[3] < 0:
        unit = -unit
    return float(unit[0]), float(unit[1]), float(unit[2]), float(unit[3])


def _frame(name: str) -> str:
    return str(name).lstrip("/")  # tf2 ignores a leading slash


class TransformTree:
    """Static frames: each child's transform to its parent; the newest message for a child wins."""

    def __init__(self) -> None:
        """An empty tree."""
        self._parent: dict[str, tuple[str, np.ndarray]] = {}

    def add_message(self, msg: Any) -> None:
        """Take every transform of a tf2_msgs/TFMessage; ValueError naming the first unusable one (the others
        are kept)."""
        problems = []
        for transform in msg.transforms:
            parent, child = _frame(transform.header.frame_id), _frame(transform.child_frame_id)
            try:
                if not parent or not child or parent == child:
                    raise ValueError(f"frames {parent!r} -> {child!r}")
                matrix = transform_matrix(transform.transform.translation, transform.transform.rotation)
            except ValueError as exc:
                problems.append(f"{parent or '?'} <- {child or '?'}: {exc}")
                continue
            self._parent[child] = (parent, matrix)
        if problems:
            raise ValueError(f"unusable transform(s) in TFMessage: {'; '.join(problems)}")

    def available(self) -> bool:
        """Whether any transform is known."""
        return bool(self._parent)

    @property
    def frames(self) -> list[str]:
        """Every frame named by a transform."""
        return sorted({*self._parent, *(parent for parent, _ in self._parent.values())})

    def _to_root(self, frame: str) -> dict[str, np.ndarray]:
        """frame -> ancestor <- frame for every ancestor (itself included) up to the root."""
        chain = {frame: np.eye(4)}
        current, to_current = frame, np.eye(4)
        while current in self._parent and len(chain) <= MAX_CHAIN:
            parent, parent_from_current = self._parent[current]
            if parent in chain:  # a cycle: stop where it closes
                break
            to_current = parent_from_current @ to_current
            chain[parent] = to_current
            current = parent
        return chain

    def lookup(self, target: str, source: str) -> np.ndarray | None:
        """4x4 target <- source through their nearest common ancestor, or None when not connected."""
        target, source = _frame(target), _frame(source)
        up_from_source = self._to_root(source)
        up_from_target = self._to_root(target)
        for ancestor, ancestor_from_target in up_from_target.items():  # nearest to the target first
            if ancestor in up_from_source:
                return np.linalg.inv(ancestor_from_target) @ up_from_source[ancestor]
        return None


__all__ = ["TransformLookup", "TransformTree", "transform_matrix", "rotation_quaternion"]
