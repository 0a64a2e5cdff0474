"""Procedural motion clips at 20 fps: the course's stand-in for HumanML3D.

Each action is a few joint-angle curves (hips, knees, shoulders, elbows, spine) driven by a
phase, pushed through forward kinematics; feet are kept on the ground and, for in-place
actions, planted, so the clips look like motion rather than puppetry. Every clip gets natural
variation (amplitude, tempo, phase, slow noise) and speed / direction / repetition modifiers
that the caption mentions.
"""

from __future__ import annotations

import random

import numpy as np

from course_lib.motion.captions import caption_for
from course_lib.motion.skeleton import FEET, N_JOINTS, flex, forward_kinematics, rot_x, rot_z

FPS = 20
MAX_FRAMES = 80   # 4 s; with 4 frames per code that is at most 20 motion tokens
MIN_FRAMES = 24
ACTIONS = ["walk", "run", "jump", "wave_left", "wave_right", "squat", "turn_left", "turn_right", "kick", "idle"]
IN_PLACE = {"jump", "wave_left", "wave_right", "squat", "turn_left", "turn_right", "kick", "idle"}
TEMPO = {"slow": 0.8, "normal": 1.0, "fast": 1.25}


def _keys(u: np.ndarray, xs: list[float], ys: list[float]) -> np.ndarray:
    """Smooth (cosine-eased) interpolation through keyframes, u in [0, 1]."""
    xs_a, ys_a = np.asarray(xs), np.asarray(ys, dtype=float)
    i = np.clip(np.searchsorted(xs_a, u, side="right") - 1, 0, len(xs_a) - 2)
    w = (u - xs_a[i]) / (xs_a[i + 1] - xs_a[i])
    w = 0.5 - 0.5 * np.cos(np.pi * np.clip(w, 0, 1))
    return ys_a[i] * (1 - w) + ys_a[i + 1] * w


def _smooth_noise(T: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Slow random wobble (a few control points, eased) so no two clips are identical."""
    pts = rng.normal(0, scale, size=4)
    return _keys(np.linspace(0, 1, T), [0, 1 / 3, 2 / 3, 1], list(pts))


def sample_meta(action: str, rng: random.Random) -> dict:
    """Random modifiers for one clip of `action`."""
    meta = {"action": action, "speed": rng.choice(["slow", "normal", "normal", "fast"]), "reps": rng.choice([1, 2, 3])}
    if action == "walk":
        meta["direction"] = rng.choice(["forward", "forward", "backward"])
    if action == "jump":
        meta["forward"] = rng.random() < 0.35
    if action in ("turn_left", "turn_right"):
        meta["angle"] = rng.choice([90, 90, 180])
    if action == "kick":
        meta["leg"] = rng.choice(["left", "right"])
    if action == "run" and meta["speed"] == "slow":
        meta["speed"] = "normal"
    return meta


def _n_frames(meta: dict, rng: random.Random) -> int:
    a, tempo = meta["action"], TEMPO[meta["speed"]]
    if a in ("walk", "run", "idle"):
        secs = rng.uniform(2.0, 3.8)
    elif a == "jump":
        secs = meta["reps"] * 1.0 / tempo + 0.4
    elif a == "squat":
        secs = meta["reps"] * 1.1 / tempo + 0.4
    elif a == "kick":
        secs = meta["reps"] * 1.0 / tempo + 0.4
    elif a.startswith("wave"):
        secs = 1.0 + meta["reps"] * 0.7 / tempo
    else:  # turn
        secs = (1.4 if meta["angle"] == 90 else 2.2) / tempo + 0.3
    n = int(round(secs * FPS))
    return int(np.clip(n - n % 4, MIN_FRAMES, MAX_FRAMES))


def generate_clip(meta: dict, seed: int) -> np.ndarray:
    """Joint positions (T, 22, 3) for one clip; starts at the origin facing +z."""
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    T = _n_frames(meta, prng)
    t = np.arange(T) / FPS
    a, tempo = meta["action"], TEMPO[meta["speed"]] * rng.uniform(0.92, 1.08)
    amp = rng.uniform(0.85, 1.15)
    z = np.zeros(T)
    hipL, hipR, kneeL, kneeR = z.copy(), z.copy(), z.copy() + 3, z.copy() + 3
    shL, shR, abL, abR = z.copy(), z.copy(), z + 8.0, z + 8.0
    elL, elR, rollL, rollR = z + 10.0, z + 10.0, z.copy(), z.copy()
    lean, heading, lift = z.copy(), z.copy(), z.copy()
    vel = 0.0  # forward root speed (m/s) for walk / run
    ankle_flex = z.copy()

    if a in ("walk", "run"):
        run = a == "run"
        f = (1.35 if run else 0.95) * tempo
        stride = (2.1 if run else 1.3) * amp
        sign = -1.0 if meta.get("direction") == "backward" else 1.0
        ph = sign * 2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)
        A = (42 if run else 24) * amp
        hipL, hipR = A * np.sin(ph), A * np.sin(ph + np.pi)
        kA = 85 if run else 38
        kneeL = 6 + kA * np.clip(np.sin(ph + 2.2), 0, None)
        kneeR = 6 + kA * np.clip(np.sin(ph + np.pi + 2.2), 0, None)
        shL, shR = -(32 if run else 20) * amp * np.sin(ph), -(32 if run else 20) * amp * np.sin(ph + np.pi)
        elL = elR = z + (85 if run else 15)
        lean = z + (14 if run else 3)
        lift = (0.06 if run else 0.0) * np.clip(np.sin(2 * ph), 0, None)
        vel = sign * stride * f * (0.5 if sign < 0 else 1.0)
    elif a == "jump":
        D = 1.0 / tempo
        u = np.clip((t - 0.2) / D, 0, meta["reps"] - 1e-6) % 1.0
        u[t < 0.2] = 0.0
        u[t >= 0.2 + meta["reps"] * D] = 0.0
        crouch = _keys(u, [0, .2, .3, .45, .6, .75, 1], [0, 1, .2, 0, .1, .7, 0])
        hipL = hipR = 70 * crouch * amp
        kneeL = kneeR = 3 + 85 * crouch * amp
        ankle_flex = -25 * crouch
        lean = 25 * crouch
        shL = shR = _keys(u, [0, .2, .35, .5, .7, 1], [0, -40, 150, 150, 30, 0]) * amp
        lift = 0.32 * amp * _keys(u, [0, .3, .45, .6, 1], [0, 0, 1, 0, 0])
    elif a == "squat":
        D = 1.1 / tempo
        u = np.clip((t - 0.2) / D, 0, None)
        s = np.where(u < meta["reps"], _keys(u % 1.0, [0, .4, .6, 1], [0, 1, 1, 0]), 0.0) * amp
        hipL = hipR = 95 * s
        kneeL = kneeR = 3 + 105 * s
        ankle_flex = -30 * s
        lean = 40 * s
        shL = shR = 85 * s
        elL = elR = 10 + 10 * s
    elif a.startswith("wave"):
        e = np.clip(np.minimum(t / 0.4, (t[-1] - t) / 0.4), 0, 1)
        e = 0.5 - 0.5 * np.cos(np.pi * e)
        osc = 35 * amp * np.sin(2 * np.pi * 1.6 * tempo * t + rng.uniform(0, 6.3))
        if a == "wave_left":
            abL, rollL = 8 + 105 * e, e * (55 + osc)
        else:
            abR, rollR = 8 + 105 * e, e * (55 + osc)
    elif a.startswith("turn"):
        D = (1.4 if meta["angle"] == 90 else 2.2) / tempo
        turn = np.radians(meta["angle"]) * (1 if a == "turn_left" else -1)
        w = np.clip((t - 0.15) / D, 0, 1)
        heading = turn * (0.5 - 0.5 * np.cos(np.pi * w))
        step = np.sin(2 * np.pi * 2.0 * tempo * t) * ((w > 0) & (w < 1))
        hipL, hipR = 12 * np.clip(step, 0, None), 12 * np.clip(-step, 0, None)
        kneeL, kneeR = 3 + 25 * np.clip(step, 0, None), 3 + 25 * np.clip(-step, 0, None)
    elif a == "kick":
        D = 1.0 / tempo
        u = np.clip((t - 0.2) / D, 0, None)
        k = np.where(u < meta["reps"], 1.0, 0.0)
        uu = u % 1.0
        hip = k * _keys(uu, [0, .3, .5, .7, 1], [0, 35, 90, 30, 0]) * amp
        knee = 3 + k * _keys(uu, [0, .3, .5, .7, 1], [0, 85, 5, 60, 0])
        if meta["leg"] == "left":
            hipL, kneeL = hip, knee
        else:
            hipR, kneeR = hip, knee
        lean = -12 * hip / 90
        abL = abR = 8 + 20 * hip / 90
    elif a == "idle":
        lean = 3 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6.3))
        shL = 4 * np.sin(2 * np.pi * 0.25 * t)
        shR = 4 * np.sin(2 * np.pi * 0.25 * t + 1.0)
    else:
        raise ValueError(f"unknown action {a!r}; choose from {ACTIONS}")

    noise = {k: _smooth_noise(T, rng, 3.0) for k in ("lean", "shL", "shR", "hip", "el")}
    local = np.broadcast_to(np.eye(3), (T, N_JOINTS, 3, 3)).copy()
    local[:, 3] = flex(lean + noise["lean"])                 # spine1: lean forward
    local[:, 1] = flex(hipL + noise["hip"])
    local[:, 2] = flex(hipR - noise["hip"])
    local[:, 4] = rot_x(np.radians(kneeL))                  # knees bend backward
    local[:, 5] = rot_x(np.radians(kneeR))
    local[:, 7] = flex(ankle_flex)
    local[:, 8] = flex(ankle_flex)
    local[:, 16] = rot_z(np.radians(abL)) @ flex(shL + noise["shL"])
    local[:, 17] = rot_z(-np.radians(abR)) @ flex(shR + noise["shR"])
    local[:, 18] = rot_z(np.radians(rollL)) @ flex(elL + noise["el"])
    local[:, 19] = rot_z(-np.radians(rollR)) @ flex(elR + noise["el"])

    root = np.zeros((T, 3))
    pos = forward_kinematics(local, root, heading)
    # Feet on the ground: lift the whole body so the lowest foot joint touches y = 0.
    pos[:, :, 1] -= pos[:, list(FEET), 1].min(axis=1, keepdims=True)
    pos[:, :, 1] += lift[:, None]
    if a in IN_PLACE:
        # Planted feet: move the body so the supporting feet stay where they started.
        support = [7, 8]
        if a == "kick":
            support = [8] if meta["leg"] == "left" else [7]
        drift = pos[:, support, :].mean(axis=1) - pos[:1, support, :].mean(axis=1)
        drift[:, 1] = 0.0
        if a == "jump" and meta.get("forward"):
            D = 1.0 / tempo
            hop = np.clip((t - 0.2 - 0.3 * D) / D, 0, meta["reps"])
            jumps = np.floor(hop) + np.clip((hop % 1.0) / 0.3, 0, 1)
            drift[:, 2] -= 0.45 * jumps
        pos -= drift[:, None, :]
    else:
        fwd = np.cumsum(np.full(T, vel / FPS)) - vel / FPS
        pos[:, :, 2] += fwd[:, None]
    pos[:, :, [0, 2]] -= pos[:1, :1, [0, 2]]  # start at the origin
    return pos.astype(np.float32)


def make_dataset(n: int, seed: int) -> list[dict]:
    """n clips with balanced actions: each a dict(joints, caption, action, meta)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        action = ACTIONS[i % len(ACTIONS)]
        meta = sample_meta(action, rng)
        clip_seed = rng.randrange(2**31)
        out.append({"joints": generate_clip(meta, clip_seed), "caption": caption_for(meta, rng), "action": action, "meta": meta})
    return out
