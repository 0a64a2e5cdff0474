"""Prompt + temperature → animation, as an ipywidgets front end over `MotionPipeline.generate`.

Every widget in the course comes with a static figure of its default values (drawn by the
notebook with `render.compare_figure`), so exported notebooks still show something.
"""

from __future__ import annotations

import ipywidgets as widgets
import torch
from IPython.display import Image

from course_lib.motion.pipeline import MotionPipeline
from course_lib.motion.render import gif_bytes


def motion_widget(pipe: MotionPipeline, prompt: str = "a person jumps twice", temperature: float = 1.0,
                  seed: int = 0, max_frames: int = 40) -> widgets.VBox:
    """A text box and a temperature slider; the GIF below re-renders when either changes."""
    text = widgets.Text(value=prompt, description="prompt", continuous_update=False, layout=widgets.Layout(width="420px"))
    temp = widgets.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.1, description="temperature", continuous_update=False)
    info = widgets.Label()
    out = widgets.Output()

    def render(_=None) -> None:
        gen = torch.Generator().manual_seed(seed)
        m = pipe.generate([text.value or " "], temperature=temp.value, generator=gen)[0]
        unknown = pipe.text.tokenizer.unknown_words(text.value)
        info.value = f"{len(m.codes)} codes → {len(m.joints)} frames" + (f"; unknown words: {', '.join(unknown)}" if unknown else "")
        # Set the Output widget's contents directly: `with out:` capture needs a live frontend, and
        # without one (nbconvert, nbval) the GIF would leak into the cell's own output.
        out.outputs = ()
        out.append_display_data(Image(data=gif_bytes([m.joints], [text.value[:40]], max_frames=max_frames), format="gif"))

    text.observe(render, names="value")
    temp.observe(render, names="value")
    render()
    return widgets.VBox([text, temp, info, out])
