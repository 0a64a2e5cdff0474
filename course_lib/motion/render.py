"""Drawing skeletons: a static strip of poses, side-by-side comparisons and animated GIFs.

Everything is plain 2D matplotlib (a fixed camera, turned 30° about y, projects 3D → 2D) and Pillow writes
the GIF: no ffmpeg, and none of the mplot3d animation code that broke on newer matplotlib.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from course_lib.core.files import atomic_write_bytes
from course_lib.motion.skeleton import KINEMATIC_CHAINS
from course_lib.text.plots import use_course_font

use_course_font()  # GIF titles may be Chinese prompts

CHAIN_COLORS = ["#d62728", "#1f77b4", "#333333", "#ff7f0e", "#2ca02c"]  # right leg, left leg, spine, right arm, left arm


def project(joints: np.ndarray, yaw_deg: float = 30.0, elev: float = 0.0) -> np.ndarray:
    """(..., 3) → (..., 2): rotate the world by yaw about y, then drop depth (elev > 0 lifts far points: an oblique view)."""
    a = np.radians(yaw_deg)
    x = joints[..., 0] * np.cos(a) + joints[..., 2] * np.sin(a)
    z = -joints[..., 0] * np.sin(a) + joints[..., 2] * np.cos(a)
    return np.stack([x, joints[..., 1] + elev * z], axis=-1)


def draw_pose(ax, joints: np.ndarray, alpha: float = 1.0, lw: float = 2.0, colors=None) -> None:
    """One (22, 3) pose on a matplotlib axis."""
    p = project(joints)
    for chain, color in zip(KINEMATIC_CHAINS, colors or CHAIN_COLORS, strict=True):
        ax.plot(p[chain, 0], p[chain, 1], color=color, lw=lw, alpha=alpha, solid_capstyle="round")


def _limits(*clips: np.ndarray, pad: float = 0.3) -> tuple[tuple[float, float], tuple[float, float]]:
    p = np.concatenate([project(c).reshape(-1, 2) for c in clips])
    (x0, y0), (x1, y1) = p.min(0) - pad, p.max(0) + pad
    return (float(x0), float(x1)), (float(min(y0, -0.1)), float(y1))


def _ground(ax, xlim) -> None:
    ax.axhline(0.0, color="#bbbbbb", lw=1, zorder=0)
    ax.set_xlim(*xlim)


def pose_strip(ax, joints: np.ndarray, n: int = 6, title: str = "") -> None:
    """n poses of a clip overlaid along its path, later poses darker: motion in one static picture."""
    xlim, ylim = _limits(joints)
    _ground(ax, xlim)
    for k, t in enumerate(np.linspace(0, len(joints) - 1, n).astype(int)):
        draw_pose(ax, joints[t], alpha=0.25 + 0.75 * k / max(1, n - 1), lw=1.6)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def compare_figure(clips: list[np.ndarray], titles: list[str], n: int = 6, size: float = 3.2):
    """Side-by-side pose strips (e.g. original vs reconstruction) with shared limits."""
    fig, axes = plt.subplots(1, len(clips), figsize=(size * len(clips), size), squeeze=False)
    for ax, c, t in zip(axes[0], clips, titles, strict=True):
        pose_strip(ax, c, n, t)
    fig.tight_layout()
    return fig


def gif_bytes(clips: list[np.ndarray], titles: list[str] | None = None, max_frames: int = 40, fps: int = 20,
              size: float = 2.2, dpi: int = 60) -> bytes:
    """An animated GIF (bytes) of one or more clips side by side; frames subsampled to <= max_frames.

    Every frame is drawn with Agg and handed to Pillow; a fixed palette-free RGB→P conversion
    keeps the bytes identical from run to run (strict nbval compares them).
    """
    T = max(len(c) for c in clips)
    step = max(1, int(np.ceil(T / max_frames)))
    frames_idx = list(range(0, T, step))
    lims = [_limits(c) for c in clips]
    # A bare Figure + Agg canvas: no pyplot state, so nothing leaks into a notebook's inline output.
    fig = Figure(figsize=(size * len(clips), size), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(clips), squeeze=False)
    frames = []
    for t in frames_idx:
        for k, (ax, c) in enumerate(zip(axes[0], clips, strict=True)):
            ax.clear()
            _ground(ax, lims[k][0])
            draw_pose(ax, c[min(t, len(c) - 1)], lw=2.0)
            ax.set_ylim(*lims[k][1])
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if titles:
                ax.set_title(titles[k], fontsize=8)
        canvas.draw()
        rgb = np.asarray(canvas.buffer_rgba())[..., :3]
        frames.append(Image.fromarray(rgb).quantize(colors=32, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 * step / fps), loop=0)
    return buf.getvalue()


def save_gif(joints: np.ndarray, path: str | Path, title: str = "", **kw) -> Path:
    """Write a GIF atomically (temp name in the same folder, then rename)."""
    p = Path(path)
    data = gif_bytes([joints], [title] if title else None, **kw)
    return atomic_write_bytes(p, data)
