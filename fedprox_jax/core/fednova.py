"""FedNova (Wang et al. 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization"): normalised averaging.

Client i's update x - y_i is divided by a_i = ||a_i||_1, the sum of the coefficients its local
solver put on its stochastic gradients, and the normalised updates are averaged with the data
weights p_i and rescaled by tau_eff = sum_i p_i a_i:

    x_new = x - tau_eff * sum_i p_i (x - y_i) / a_i

With equal work (all a_i equal) this is FedAvg's average; with stragglers or unequal data it
is not: a client that ran fewer steps is not outweighed by one that ran more. As weights on the
clients' models, w_i = p_i tau_eff / a_i, plus (1 - sum_i w_i) on x itself.

a_i of the local solver SGD(lr, momentum rho) on loss + mu/2 ||w - x||^2 after tau steps: run
the solver's linear recursion with every gradient equal to 1 (``effective_steps``). It gives
the paper's closed forms: tau (plain SGD), (tau - rho (1 - rho^tau) / (1 - rho)) / (1 - rho)
(momentum; NIID-Bench's code), (1 - (1 - lr mu)^tau) / (lr mu) (the proximal term).
Weight decay counts as part of the loss's gradient (as NIID-Bench's code does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedprox_jax.core.hooks import Hooks, Looped


def effective_steps(steps, lr, mu, momentum):
  """a_i for each client's ``steps`` (an int array; 0 gives 0), elementwise."""
  steps = jnp.asarray(steps, jnp.int32)

  def one(tau):
    def body(_, carry):
      d, v = carry  # d: w - x in units of -lr; v: the momentum buffer
      v = momentum * v + 1.0 - mu * lr * d
      return d + v, v
    d, _ = jax.lax.fori_loop(0, tau, body, (jnp.float32(0), jnp.float32(0)))
    return d

  return jax.vmap(one)(steps)


def weights(data_weights, a):
  """The weights w_i = p_i tau_eff / a_i on the clients' models (0 where a_i = 0: no work)
  and the weight 1 - sum_i w_i the server keeps on the global model."""
  tau_eff = jnp.sum(data_weights * a)
  w = jnp.where(a > 0, data_weights * tau_eff / jnp.where(a > 0, a, 1.0), 0.0)
  return w, 1.0 - jnp.sum(w)


def round_weights(data_weights, steps, hp):
  """The hook: w_i on the clients' models for their ``steps`` under the local solver ``hp``."""
  return weights(data_weights, effective_steps(steps, hp.lr, hp.mu, hp.momentum))[0]


# The looped reference (core/reference.py), from the paper's formulas.

def looped_a(steps: int, lr: float, mu: float, momentum: float) -> float:
  """||a_i||_1, by the paper's closed forms where they apply, else by running the local
  solver's recursion (every gradient 1) in float64 on the host."""
  if mu == 0 and momentum == 0:
    return float(steps)
  if mu == 0:
    return (steps - momentum * (1 - momentum ** steps) / (1 - momentum)) / (1 - momentum)
  if momentum == 0:
    return (1 - (1 - lr * mu) ** steps) / (lr * mu)
  displacement, buf = 0.0, 0.0
  for _ in range(steps):
    buf = momentum * buf + 1.0 + mu * displacement
    displacement -= lr * buf
  return -displacement / lr


def looped_aggregate(x, ys, steps, p, hp):
  """x - tau_eff sum_i p_i (x - y_i) / a_i, and the weights p_i tau_eff / a_i."""
  a = [looped_a(k, float(hp.lr), float(hp.mu), float(hp.momentum)) for k in steps]
  tau_eff = sum(p_i * a_i for p_i, a_i in zip(p, a))
  kept = [i for i in range(len(a)) if a[i] > 0]
  aggregate = jax.tree_util.tree_map(
      lambda x, *ys: x - tau_eff * sum(p[i] / a[i] * (x - ys[i]) for i in kept), x, *ys)
  return aggregate, jnp.array([p[i] * tau_eff / a[i] if a[i] > 0 else 0.0
                               for i in range(len(a))], jnp.float32)


HOOKS = Hooks("FedNova", weights=round_weights, rest_on_global=True,
              looped=Looped(aggregate=looped_aggregate))
