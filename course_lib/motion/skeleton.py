"""The 22-joint HumanML3D skeleton (y up, the body faces +z, its left side is +x) and forward kinematics.

Joint order and kinematic chains are HumanML3D's, so plotting code written for real data works
unchanged. Bone offsets are a fixed adult body (~1.7 m), which keeps "error as % of body height"
meaningful across clips.
"""

from __future__ import annotations

import numpy as np

JOINT_NAMES = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
]
N_JOINTS = len(JOINT_NAMES)
PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19]
# HumanML3D's chains for plotting: right leg, left leg, spine + head, right arm, left arm.
KINEMATIC_CHAINS = [[0, 2, 5, 8, 11], [0, 1, 4, 7, 10], [0, 3, 6, 9, 12, 15], [9, 14, 17, 19, 21], [9, 13, 16, 18, 20]]
FEET = (7, 10, 8, 11)  # left ankle, left foot, right ankle, right foot
L_HIP, R_HIP, L_SHOULDER, R_SHOULDER = 1, 2, 16, 17

# Offset of each joint from its parent in the parent's rest frame (metres).
OFFSETS = np.array([
    [0.0, 0.0, 0.0],                                        # pelvis (root)
    [0.09, -0.07, 0.0], [-0.09, -0.07, 0.0], [0.0, 0.11, -0.01],   # hips, spine1
    [0.0, -0.40, 0.01], [0.0, -0.40, 0.01], [0.0, 0.13, 0.0],      # knees, spine2
    [0.0, -0.40, -0.02], [0.0, -0.40, -0.02], [0.0, 0.06, 0.01],   # ankles, spine3
    [0.0, -0.05, 0.12], [0.0, -0.05, 0.12], [0.0, 0.21, -0.01],    # feet, neck
    [0.07, 0.12, 0.0], [-0.07, 0.12, 0.0], [0.0, 0.11, 0.04],      # collars, head
    [0.10, 0.02, 0.0], [-0.10, 0.02, 0.0],                          # shoulders
    [0.0, -0.27, 0.0], [0.0, -0.27, 0.0], [0.0, -0.25, 0.0], [0.0, -0.25, 0.0],  # elbows, wrists
], dtype=np.float64)


def rot_x(a: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations about x; positive a swings a hanging limb backward (-z)."""
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def rot_y(a: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations about the vertical axis; a is the heading (forward = (sin a, 0, cos a))."""
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def rot_z(a: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations about z; positive a raises a hanging left arm sideways (+x)."""
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def flex(deg: np.ndarray) -> np.ndarray:
    """Swing a hanging limb forward by deg degrees (hip or shoulder flexion)."""
    return rot_x(-np.radians(deg))


def forward_kinematics(local: np.ndarray, root_pos: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Joint positions (T, 22, 3) from local rotations (T, 22, 3, 3), root positions (T, 3), heading (T,).

    A joint's local rotation turns the bones of its children: rotating the hip moves knee,
    ankle and foot. Parents come before children in HumanML3D order, so one pass suffices.
    """
    T = local.shape[0]
    glob = np.zeros_like(local)
    pos = np.zeros((T, N_JOINTS, 3))
    glob[:, 0] = rot_y(heading) @ local[:, 0]
    pos[:, 0] = root_pos
    for j in range(1, N_JOINTS):
        p = PARENTS[j]
        pos[:, j] = pos[:, p] + glob[:, p] @ OFFSETS[j]
        glob[:, j] = glob[:, p] @ local[:, j]
    return pos


def rest_pose() -> np.ndarray:
    """(22, 3) standing pose with the feet on the ground (y = 0)."""
    T = 1
    local = np.broadcast_to(np.eye(3), (T, N_JOINTS, 3, 3)).copy()
    pos = forward_kinematics(local, np.zeros((T, 3)), np.zeros(T))[0]
    pos[:, 1] -= pos[list(FEET), 1].min()
    return pos


def body_height() -> float:
    """Head to lowest foot joint in the rest pose (metres); the unit for '% of body height'."""
    p = rest_pose()
    return float(p[:, 1].max() - p[:, 1].min())
