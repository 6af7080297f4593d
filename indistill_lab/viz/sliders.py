"""Client-side sliders: an explorer's states precomputed in Python, switched in the browser without a kernel.

An `Explorer` redraws its figures whenever one of its controls changes. `explorer_states` moves the chosen
controls through every combination of their given values and records what the explorer then shows (its
figures as plotly JSON and its status text), by the explorer's own `update` code, so a precomputed state is
exactly what the live notebook draws. `slider_script` writes those states as a small JavaScript file that the
course website's `indistill.js` turns into range inputs (or drop-downs) over the recorded figures.
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import ipywidgets as widgets
import numpy as np
from PIL import Image
from traitlets import TraitError

from .common import Explorer, figure_json

SIGNIFICANT_DIGITS = 4
"""Floats in a recorded figure are kept to this many significant digits: the figures stay the same to the eye
and a slider's file is about half the size."""


@dataclass(frozen=True)
class Control:
    """One control of a client-side slider: the explorer's widget attribute to move, the values to record, a
    label, and how the page shows it ("range": a slider over the values in order; "select": a drop-down)."""

    attribute: str
    values: tuple[Any, ...]
    label: str
    kind: str = "range"

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"control {self.attribute!r} has no values: give the values to precompute.")
        if self.kind not in ("range", "select"):
            raise ValueError(f"control {self.attribute!r}: kind must be 'range' or 'select', got {self.kind!r}.")


def _rounded(value: Any) -> Any:
    """`value` (plotly JSON) with every float kept to SIGNIFICANT_DIGITS significant digits."""
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return round(value, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value))))
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _pixels(z: Any) -> np.ndarray:
    """An image trace's z as uint8 pixels: nested lists, or plotly's typed-array form {dtype, bdata, shape}."""
    if isinstance(z, dict):
        flat = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"])
        return flat.reshape([int(n) for n in str(z.get("shape", len(flat))).split(",")]).astype(np.uint8)
    return np.asarray(z, dtype=np.uint8)


def _compact_images(figure: dict[str, Any]) -> dict[str, Any]:
    """`figure` with each image trace's pixel array (z: rows of RGB triples) stored as a PNG data URL (source):
    a 28x28 picture is about 0.5 kB instead of 8 kB of numbers, and plotly.js draws it the same."""
    for trace in figure.get("data", []):
        if trace.get("type") == "image" and "z" in trace and "source" not in trace:
            buffer = io.BytesIO()
            Image.fromarray(_pixels(trace.pop("z"))).save(buffer, format="PNG")
            trace["source"] = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return figure


def _status_html(widget: Any) -> list[str]:
    """The HTML texts (status lines) of a widget tree, top to bottom."""
    if isinstance(widget, widgets.HTML):
        return [widget.value]
    return [text for child in getattr(widget, "children", ()) for text in _status_html(child)]


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def explorer_states(explorer: Explorer, controls: Sequence[Control], start: Sequence[Any] | None = None
                    ) -> dict[str, Any]:
    """Every combination of the controls' values (the last control varying fastest): what the explorer shows
    after its controls are set to it. `start` holds the values the page opens at (default: the explorer's
    current values). Controls not listed keep their current values. Raises ValueError when a value is not one
    the explorer's control accepts."""
    owners = []
    for control in controls:
        widget = getattr(explorer, control.attribute, None)
        if not isinstance(widget, widgets.ValueWidget):
            raise ValueError(f"{type(explorer).__name__} has no control {control.attribute!r}: name one of its "
                             "widget attributes (e.g. 'temperature').")
        owners.append(widget)
    start = list(start) if start is not None else [w.value for w in owners]
    missing = [(c.attribute, v) for c, v in zip(controls, start) if v not in c.values]
    if missing:
        raise ValueError(f"start values {missing} are not among their controls' values: add them to the values.")
    frames = []
    for combination in itertools.product(*(c.values for c in controls)):
        for control, widget, value in zip(controls, owners, combination):
            try:
                widget.value = value
            except TraitError as error:  # it names the widget's own limits
                raise ValueError(f"{type(explorer).__name__}.{control.attribute} refuses {value!r}: {error}") from error
        frames.append({"figures": [_compact_images(_rounded(figure_json(f))) for f in explorer.figures],
                       "status": "<br>".join(_status_html(explorer.widget))})
    return {"controls": [{"label": c.label, "kind": c.kind, "labels": [_label(v) for v in c.values],
                          "start": c.values.index(s)} for c, s in zip(controls, start)],
            "frames": frames}


def slider_script(name: str, states: dict[str, Any]) -> str:
    """A JavaScript file that registers `states` (from `explorer_states`) under `name` for indistill.js, which
    draws the slider into the page's `<div class="indistill-slider" data-slider="NAME">`."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"slider name {name!r}: use letters, digits, '-' and '_' (it names a file and an id).")
    payload = json.dumps(states, separators=(",", ":")).replace("</", "<\\/")
    return f"(window.indistillSliders = window.indistillSliders || {{}})[{json.dumps(name)}] = {payload};\n"


def slider_markup(name: str, static_prefix: str = "_static") -> str:
    """The HTML a page holds where the slider goes: its placeholder and its states' script."""
    return (f'<div class="indistill-slider" data-slider="{name}"></div>\n'
            f'<script src="{static_prefix}/sliders/{name}.js"></script>\n')
