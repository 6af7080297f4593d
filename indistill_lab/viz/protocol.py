"""Figures of what a training protocol does to InDistill (notebook 07): how far each set of layer
targets is from the unpruned auxiliary, and Adam's memory at the switch from MSE to PKT."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

TARGET_COLOURS = {"pruned": "#d62728", "reference": "#1f77b4", "tuned": "#2ca02c", "kept": "#7f7f7f"}
TARGET_LABELS = {"pruned": "coherent pruned net", "reference": "reference code's targets",
                 "tuned": "pruned net + PKT fine-tune", "kept": "unpruned, kept channels"}


def target_gap_figure(rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Grouped bars per stage: CKA with the unpruned auxiliary's features (left) and relative MSE (right,
    log scale), one colour per set of targets (`sources.target_gaps` rows)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("linear CKA with the unpruned features (1 = same)",
                                                        "relative MSE to them (log)"))
    for variant in dict.fromkeys(r["targets"] for r in rows):
        mine = [r for r in rows if r["targets"] == variant]
        common = dict(x=[r["stage"] for r in mine], name=TARGET_LABELS.get(variant, variant),
                      marker_color=TARGET_COLOURS.get(variant, "#9467bd"), legendgroup=variant)
        fig.add_bar(y=[r["cka"] for r in mine], text=[f"{r['cka']:.2f}" for r in mine], row=1, col=1, **common)
        fig.add_bar(y=[max(r["relative_mse"], 1e-6) for r in mine], showlegend=False,
                    text=[f"{r['relative_mse']:.2g}" for r in mine], row=1, col=2, **common)
    fig.update_yaxes(range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(height=360, barmode="group", margin=dict(t=60, b=40), legend=dict(orientation="h", y=-0.15))
    return fig


def adam_memory_figure(by_policy: Mapping[str, Sequence[Mapping[str, Any]]]) -> go.Figure:
    """Per layer, Adam's sqrt(v) over the current gradient at the first PKT step, one bar colour per
    optimizer-state policy (`experiments.optimizer_state.adam_state_at_switch` rows); log scale, 1 marked."""
    fig = go.Figure()
    colours = {"run": "#d62728", "phase": "#2ca02c", "epoch": "#1f77b4"}
    for policy, rows in by_policy.items():
        fig.add_bar(x=[r["layer"] for r in rows], y=[r["ratio"] for r in rows], name=f"optimizer_state={policy!r}",
                    marker_color=colours.get(policy, "#7f7f7f"), text=[f"{r['ratio']:.3g}" for r in rows],
                    hovertemplate="%{x}<br>sqrt(v) / |g| = %{y:.3g}<extra></extra>")
    fig.add_hline(y=1, line_dash="dot")
    fig.update_layout(height=360, barmode="group", yaxis_type="log", yaxis_title="sqrt(v) / gradient RMS",
                      title="Adam's memory at the first PKT step: how many times smaller each step is "
                            "(dotted: a fresh optimizer)",
                      margin=dict(t=60, b=40), legend=dict(orientation="h", y=-0.2))
    return fig
