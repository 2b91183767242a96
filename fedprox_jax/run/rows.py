"""A round's metrics row as metrics.jsonl and rows.jsonl hold it (the columns: ``schema.py``),
and the one-line texts a run prints beside its rows.
"""

from __future__ import annotations

import math

import numpy as np

from fedprox_jax.core import rounds


def metrics_row(t: int, m: rounds.RoundMetrics, evaluation: dict, wall_time: float,
                mu: float) -> dict:
  """The row of round ``t`` from its (host) round metrics and evaluation results."""
  executed = int(m.lanes.executed_steps)
  evaluation = {k: float(v) for k, v in evaluation.items()}
  if m.inexactness is not None:  # over the clients that trained (the others' gamma is NaN)
    gamma = np.asarray(m.inexactness, np.float64)
    gamma = gamma[~np.isnan(gamma)]
    evaluation.update(gamma_mean=float(gamma.mean()) if len(gamma) else None,
                      gamma_max=float(gamma.max()) if len(gamma) else None)
  if not math.isfinite(evaluation.get("b_dissimilarity", 0.0)):  # grad f = 0: B undefined
    evaluation["b_dissimilarity"] = None
  return {"round": t, **evaluation,
          "local_train_loss": None if bool(m.all_dropped) else float(m.train_loss),
          "mu": float(mu),
          "num_stragglers": int(m.num_stragglers), "num_aggregated": int(m.num_aggregated),
          "all_dropped": bool(m.all_dropped), "useful_steps": int(m.lanes.useful_steps),
          "executed_steps": executed,
          "step_efficiency": float(m.lanes.useful_steps) / max(executed, 1),
          "wall_time": wall_time}


def divergence_advice(lr: float, mu: float) -> str:
  """What to change after a divergence: with lr * mu > 2 the proximal step alone overshoots
  (w - w_t is multiplied by 1 - lr * mu each step), so mu must come down, not up."""
  if lr * mu > 2:
    return (f"lr * mu = {lr * mu:g} > 2 makes the proximal step itself diverge: lower "
            "--config.mu or --config.lr so that lr * mu < 2")
  return "Lower --config.lr (or raise --config.mu)"


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
      else f"{seconds // 60}m{seconds % 60:02d}s"
