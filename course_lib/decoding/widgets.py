"""Interactive front ends (ipywidgets) over the library's pure functions, grouped by chapter.

Every widget has a static twin (a function drawing the default values with matplotlib), so an
executed notebook, an HTML export or a CI run still shows the picture without a live kernel.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from course_lib.decoding.decode import next_token_logits
from course_lib.decoding.sampling import filter_logits
from course_lib.decoding.streaming import generate_stream
from course_lib.text.plots import plot_next_token_distribution

# ===================================================================== chapter 02: sampling


def sampling_figure(model, enc, prompt: str = "农夫山泉", temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
                    seed: int = 0, max_new_tokens: int = 24, n: int = 12):
    """The explorer's picture for one setting: next-token bars and a sampled continuation (top_k=0 = off).

    Returns (figure, continuation text)."""
    logits = next_token_logits(model, enc, prompt)
    k = top_k or None
    filtered = filter_logits(logits[None], temperature, k, top_p)[0]
    kept = int((filtered > float("-inf")).sum())
    text = generate_stream(model, enc, prompt, max_new_tokens, temperature, k, top_p,
                           generator=torch.Generator().manual_seed(seed), on_text=lambda t: None)
    fig = plot_next_token_distribution(enc, logits, filtered, n=n,
                                       title=f"after {prompt!r}: T={temperature}, top_k={top_k or 'off'}, top_p={top_p} "
                                             f"→ {kept:,} tokens kept")
    return fig, text


def sampling_explorer(model, enc, prompt: str = "农夫山泉", temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
                      seed: int = 0, max_new_tokens: int = 24):
    """Sliders for temperature, top-k (0 = off), top-p and seed, and a prompt box."""
    import ipywidgets as W
    from IPython.display import display

    controls = dict(
        prompt=W.Text(value=prompt, description="prompt"),
        temperature=W.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05, description="temperature"),
        top_k=W.IntSlider(value=top_k, min=0, max=50, description="top_k (0=off)"),
        top_p=W.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="top_p"),
        seed=W.IntSlider(value=seed, min=0, max=20, description="seed"),
    )
    out = W.Output()

    def redraw(**kw):
        with out:
            out.clear_output(wait=True)
            fig, text = sampling_figure(model, enc, max_new_tokens=max_new_tokens, **kw)
            plt.show()
            print("continuation:", repr(kw["prompt"] + text))
            plt.close(fig)

    W.interactive_output(redraw, controls)
    box = W.VBox([W.HBox([controls["prompt"], controls["seed"]]),
                  W.HBox([controls["temperature"], controls["top_k"], controls["top_p"]]), out])
    display(box)
    return box
