"""Why the optimizer's state at curriculum boundaries matters, measured.

InDistill's MSE phases produce gradients far larger than the PKT phase that follows. Adam divides each
step by sqrt(v), a running mean of squared gradients (beta2 = 0.999, so ~1000-step memory). Kept across
the switch, v still remembers the MSE gradients, and the PKT steps shrink by the ratio
sqrt(v) / |g|. `adam_state_at_switch` measures that ratio per layer at the first PKT step.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..methods import Context, get_method
from ..pipeline import Prepared, RunConfig, build
from ..train import Callback, Trainer


class _AtFirstStepOf(Callback):
    """At the first step of `epoch`: per weight tensor, Adam's bias-corrected sqrt(v) and |gradient| (RMS)."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.rows = epoch, []

    def on_batch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if trainer.epoch != self.epoch or self.rows:
            return
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        beta2 = trainer.optimizer.param_groups[0]["betas"][1]
        for p, state in trainer.optimizer.state.items():
            if id(p) not in names or p.grad is None or p.dim() < 2:
                continue  # weights only: conv kernels and linear matrices
            v_hat = state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))
            grad_rms = float(p.grad.pow(2).mean().sqrt())
            adam_rms = float(v_hat.mean().sqrt())
            self.rows.append({"layer": names[id(p)].removesuffix(".weight"), "grad_rms": grad_rms,
                              "sqrt_v_rms": adam_rms, "ratio": adam_rms / grad_rms if grad_rms > 0 else math.inf,
                              "adam_steps": int(state["step"])})


def adam_state_at_switch(prep: Prepared, cfg: RunConfig, method: str = "indistill-paper",
                         seed: int = 0) -> list[dict[str, Any]]:
    """Train `method` up to the first step of its final (PKT) term under `cfg.optimizer_state` and report,
    per layer, sqrt(v) against the current gradient: a ratio far above 1 means Adam's steps are that
    many times smaller than a fresh optimizer's would be."""
    m = get_method(method)
    curriculum = m.curriculum(build(cfg, "student"), Context(cfg, prep.train, prep.sources))
    if curriculum is None or curriculum.final_begins == 0:
        raise ValueError(f"{method} has no phase switch before its final term; use an InDistill variant.")
    probe = _AtFirstStepOf(curriculum.final_begins)
    torch.manual_seed(seed)
    m.train(Context(cfg, prep.train, prep.sources), seed, callbacks=[probe], epochs=curriculum.final_begins + 1)
    return probe.rows
