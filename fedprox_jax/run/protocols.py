"""The two reference protocols, field by field, and how a config's unset fields get them.

``protocol=seed`` is the seed's experiment: the Flower baseline (adap/flower
baselines/fedprox: client.py, dataset.py, models.py, conf/config.yaml). ``protocol=paper`` is
the authors' code (litian96/FedProx: flearn/trainers/fedbase.py, fedprox.py, fedavg.py). Each
field below is also a config field of its own: a config leaves it unset (None) to follow its
protocol, or sets it to mix the two.
"""

from __future__ import annotations

import ml_collections

PROTOCOL_FIELDS = {
    # field: (seed / Flower value, paper / authors' value, what each source does)
    "client_val_fraction": (
        0.1, 0.0,
        "seed: each client's partition is split with len_val = int(n / (1 / 0.1)); only the "
        "rest trains, the validation part is never used (dataset.py). paper: no such split "
        "(its own 90/10 per-client split is its test set, part of protocol=paper's data)"),
    "weight_decay": (
        0.001, 0.0,
        "seed: torch.optim.SGD(lr, weight_decay=0.001) on every parameter (models.py). paper: "
        "plain SGD plus the proximal term (the MLR's L2 regularizer never reaches the loss)"),
    "weighting": (
        "batches", "samples",
        "seed: a client reports len(trainloader), its number of batches, as its aggregation "
        "weight (client.py). paper: weights ∝ training samples (fedbase.aggregate)"),
    "straggler_rule": (
        "bernoulli", "exact",
        "seed: a [num_rounds, num_clients] Bernoulli(fraction) schedule; nobody straggles when "
        "E = 1 (client.py). paper: exactly K - round(K (1 - fraction)) stragglers per round "
        "(fedprox.py)"),
    "sampling": (
        "uniform", "uniform",
        "both codes: uniform without replacement. (The paper's Algorithm 2 text samples ∝ n_k "
        "with replacement and averages simply: sampling='weighted_replacement', "
        "weighting='uniform')"),
    "local_epochs": (
        10, 20,
        "seed: conf/config.yaml num_epochs 10 (its README's table says 5; the code runs 10). "
        "paper: 20 for MNIST"),
    "mlr_init": (
        "torch", "glorot",
        "seed: PyTorch nn.Linear's default U(±1/sqrt(fan_in)). paper: TensorFlow's "
        "Glorot-uniform kernel, zero bias"),
}
PROTOCOLS = ("seed", "paper")


def protocol_values(protocol: str) -> dict:
  """{field: value} of ``protocol`` for every protocol-governed field."""
  column = PROTOCOLS.index(protocol)
  return {field: values[column] for field, values in PROTOCOL_FIELDS.items()}


def resolve(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``c`` with every unset (None) protocol field set to its protocol's value.
  ``c.protocol`` must be valid (checked by the caller's validation first)."""
  resolved = ml_collections.ConfigDict(c.to_dict())
  for field, value in protocol_values(c.protocol).items():
    if resolved[field] is None:
      resolved[field] = value
  return resolved
