"""HumanML3D-style motion features and their inverse, `recover_from_ric`.

Per frame, 67 numbers (the first 67 of HumanML3D's 263):
  [0]      root angular velocity about y (rad/frame)
  [1:3]    root x/z velocity in the body's heading frame (m/frame)
  [3]      root height
  [4:67]   21 joint positions relative to the root, rotated into the heading frame ("ric")
Velocities and heading-frame positions make the features independent of where the clip starts
and which way it faces, which is what lets a codebook reuse "a step" anywhere. The price: the
global path must be integrated back (`recover_from_ric`), so small velocity errors drift.
Optional foot contacts (4 dims) follow HumanML3D's tail; recovery ignores them.
"""

from __future__ import annotations

import numpy as np
import torch

from course_lib.motion.skeleton import FEET, L_HIP, L_SHOULDER, N_JOINTS, R_HIP, R_SHOULDER

N_FEATS = 4 + (N_JOINTS - 1) * 3  # 67


def heading_angle(joints: np.ndarray) -> np.ndarray:
    """Facing angle (T,) from hips and shoulders: forward = (sin a, 0, cos a)."""
    across = (joints[:, R_HIP] - joints[:, L_HIP]) + (joints[:, R_SHOULDER] - joints[:, L_SHOULDER])
    # forward = up x across... with +x = left, across points to -x when facing +z: forward = (-across_z, 0, across_x)·(-1)
    fx, fz = across[:, 2], -across[:, 0]
    return np.arctan2(fx, fz)


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def _rotate_y(v: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Rotate vectors (..., 3) about y by angle a (broadcast over leading dims)."""
    c, s = np.cos(a), np.sin(a)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    return np.stack([c * x + s * z, y, -s * x + c * z], -1)


def foot_contacts(joints: np.ndarray, vel_thresh: float = 0.02, height_thresh: float = 0.08) -> np.ndarray:
    """(T, 4) 0/1: a foot joint is in contact when it is low and (almost) still."""
    feet = joints[:, list(FEET)]
    v = np.linalg.norm(np.diff(feet, axis=0, append=feet[-1:]), axis=-1)
    return ((v < vel_thresh) & (feet[..., 1] < height_thresh)).astype(np.float32)


def joints_to_features(joints: np.ndarray, contacts: bool = False) -> np.ndarray:
    """(T, 22, 3) joint positions -> (T, 67) features (71 with contacts). The last frame's velocities are 0."""
    joints = np.asarray(joints, dtype=np.float64)
    T = joints.shape[0]
    a = heading_angle(joints)
    root = joints[:, 0]
    rot_vel = np.zeros(T)
    rot_vel[:-1] = _wrap(a[1:] - a[:-1])
    lin = np.zeros((T, 3))
    lin[:-1] = root[1:] - root[:-1]
    lin = _rotate_y(lin, -a)  # into the heading frame of the current frame
    local = joints[:, 1:].copy()
    local[..., 0] -= root[:, None, 0]
    local[..., 2] -= root[:, None, 2]
    ric = _rotate_y(local, -a[:, None])
    feats = np.concatenate([rot_vel[:, None], lin[:, [0, 2]], root[:, 1:2], ric.reshape(T, -1)], axis=1)
    if contacts:
        feats = np.concatenate([feats, foot_contacts(joints)], axis=1)
    return feats.astype(np.float32)


def recover_from_ric(feats: np.ndarray | torch.Tensor) -> np.ndarray:
    """(T, >=67) features -> (T, 22, 3) joints, starting at the origin facing +z.

    Integrate the heading, rotate each frame's root velocity back to the world and integrate
    it, rotate the local joints back and add the root (HumanML3D's recover_from_ric).
    """
    f = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
    f = f.astype(np.float64)
    T = f.shape[0]
    a = np.zeros(T)
    a[1:] = np.cumsum(f[:-1, 0])
    vel = np.zeros((T, 3))
    vel[:, 0], vel[:, 2] = f[:, 1], f[:, 2]
    vel = _rotate_y(vel, a)
    root = np.zeros((T, 3))
    root[1:] = np.cumsum(vel[:-1], axis=0)
    root[:, 1] = f[:, 3]
    ric = f[:, 4:N_FEATS].reshape(T, N_JOINTS - 1, 3)
    world = _rotate_y(ric, a[:, None])
    world[..., 0] += root[:, None, 0]
    world[..., 2] += root[:, None, 2]
    return np.concatenate([root[:, None], world], axis=1).astype(np.float32)


class Normalizer:
    """Per-dimension mean/std (stored in the VQ-VAE checkpoint): the network sees z-scores."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)

    @classmethod
    def fit(cls, feats: list[np.ndarray], min_std: float = 1e-2) -> Normalizer:
        cat = torch.from_numpy(np.concatenate(feats, axis=0))
        # A floor on std: near-constant dims (a joint that hardly moves) would blow up noise.
        return cls(cat.mean(0), cat.std(0).clamp(min=min_std))

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def denorm(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.device) + self.mean.to(x.device)
