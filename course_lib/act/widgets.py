"""The chapter's widget: move the halting threshold and the step budget, see accuracy and compute.

Everything is replayed from one traced forced run (`analysis.replay`), so the slider is instant.
`threshold_widget` always draws the static figure for the default values too, so an executed
notebook or an HTML export shows something without a live kernel.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from course_lib.act.analysis import Trace, replay
from course_lib.act.plots import plot_threshold_curve


def threshold_table(trace: Trace, threshold: float, max_steps: int) -> str:
    f = replay(trace, None, max_steps)
    d = replay(trace, threshold, max_steps)
    saved = 1 - d["steps"] / f["steps"]
    return (f"max_steps={max_steps}  threshold={threshold:.2f}\n"
            f"  forced : exact {f['exact_accuracy']:.3f}  steps {f['steps']:.2f}\n"
            f"  dynamic: exact {d['exact_accuracy']:.3f}  steps {d['steps']:.2f}  "
            f"(saves {saved:.0%} of the steps, {100 * (d['exact_accuracy'] - f['exact_accuracy']):+.1f} points)")


def threshold_figure(trace: Trace, max_steps: int, mark: float | None = None):
    thresholds = np.round(np.linspace(0.05, 0.95, 19), 2)
    results = [replay(trace, float(t), max_steps) for t in thresholds]
    return plot_threshold_curve(thresholds, [r["exact_accuracy"] for r in results], [r["steps"] for r in results],
                                replay(trace, None, max_steps)["exact_accuracy"], max_steps, mark)


def threshold_widget(trace: Trace, threshold: float = 0.5, max_steps: int | None = None):
    """Print the default numbers, draw the static figure, then return the interactive sliders."""
    import ipywidgets as w

    S = trace.q_halt.shape[0]
    max_steps = max_steps or S
    print(threshold_table(trace, threshold, max_steps))
    fig = threshold_figure(trace, max_steps, mark=threshold)
    plt.show()
    plt.close(fig)

    out = w.Output()
    thr = w.FloatSlider(value=threshold, min=0.05, max=0.95, step=0.05, description="threshold")
    steps = w.IntSlider(value=max_steps, min=1, max=S, description="max steps")

    def update(*_):
        with out:
            out.clear_output(wait=True)
            print(threshold_table(trace, thr.value, steps.value))

    thr.observe(update, "value")
    steps.observe(update, "value")
    return w.VBox([w.HBox([thr, steps]), out])
