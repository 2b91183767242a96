"""The paper's synthetic federations, adaptive mu, and their runs and sweeps."""

import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedprox_jax.core import adaptive_mu
from fedprox_jax import errors
from fedprox_jax.run import experiment, signals, single, sweep
from fedprox_jax.run import grid as grid_lib
from fedprox_jax.run import config as config_lib
from fedprox_jax.data import synthetic
from fedprox_jax.errors import ConfigError
from helpers import ROOT, assert_same_rows, read_rows  # noqa: F401  (ROOT: configs importable)

from configs import synthetic as synthetic_config  # noqa: E402


def _authors_generator(alpha, beta, iid, seed, num_user=30):
  """The authors' generate_synthetic / generate_iid (litian96/FedProx data/synthetic_*), step by
  step, on numpy's global stream seeded with ``seed`` (their scripts leave it unseeded)."""
  np.random.seed(seed)
  dimension, num_class = 60, 10
  samples_per_user = np.random.lognormal(4, 2, (num_user)).astype(int) + 50
  diagonal = np.zeros(dimension)
  for j in range(dimension):
    diagonal[j] = np.power((j + 1), -1.2)
  cov_x = np.diag(diagonal)

  def softmax(x):
    return np.exp(x) / np.sum(np.exp(x))

  xs, ys = [], []
  if iid:
    mean_x = np.zeros((num_user, dimension))
    W = np.random.normal(0, 1, (dimension, num_class))
    b = np.random.normal(0, 1, num_class)
  else:
    mean_W = np.random.normal(0, alpha, num_user)
    mean_b = mean_W
    B = np.random.normal(0, beta, num_user)
    mean_x = np.zeros((num_user, dimension))
    for i in range(num_user):
      mean_x[i] = np.random.normal(B[i], 1, dimension)
  for i in range(num_user):
    if not iid:
      W = np.random.normal(mean_W[i], 1, (dimension, num_class))
      b = np.random.normal(mean_b[i], 1, num_class)
    xx = np.random.multivariate_normal(mean_x[i], cov_x, samples_per_user[i])
    yy = np.zeros(samples_per_user[i])
    for j in range(samples_per_user[i]):
      yy[j] = np.argmax(softmax(np.dot(xx[j], W) + b))
    xs.append(xx)
    ys.append(yy)
  return samples_per_user, np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("alpha,beta,iid", [(1.0, 1.0, False), (0.5, 0.5, False), (0, 0, True)])
def test_generator_replays_the_authors_code_draw_for_draw(alpha, beta, iid):
  sizes, x, y = _authors_generator(alpha, beta, iid, seed=3)
  fed = synthetic.generate(alpha, beta, iid, seed=3)
  np.testing.assert_array_equal(fed.sizes, sizes)
  np.testing.assert_array_equal(fed.x, x.astype(np.float32))
  np.testing.assert_array_equal(fed.y, y.astype(np.int32))


def test_generator_statistics():
  het = synthetic.generate(1.0, 1.0, False, seed=0)
  iid = synthetic.generate(0.0, 0.0, True, seed=0)
  for fed in (het, iid):
    assert fed.x.shape == (fed.sizes.sum(), 60) and fed.y.shape == (fed.sizes.sum(),)
    assert len(fed.sizes) == 30 and fed.sizes.min() >= 50
    assert fed.y.min() >= 0 and fed.y.max() <= 9
    starts = np.concatenate([[0], np.cumsum(fed.sizes)[:-1]])
    for k in range(30):  # every label is its device's model's argmax
      xk = fed.x[starts[k]:starts[k] + fed.sizes[k]].astype(np.float64)
      np.testing.assert_array_equal(fed.y[starts[k]:starts[k] + fed.sizes[k]],
                                    np.argmax(xk @ fed.weights[k] + fed.biases[k], axis=1))
    # Sigma: feature j varies around the device's mean with variance j^-1.2 (~22k draws).
    centred = fed.x - np.repeat(fed.means, fed.sizes, axis=0)
    np.testing.assert_allclose(centred.var(axis=0), synthetic.feature_variances(), rtol=0.06)
  # Synthetic-IID: one model for all devices and zero feature means; (1, 1): each its own.
  assert (iid.weights == iid.weights[0]).all() and (iid.means == 0).all()
  assert not np.allclose(het.weights[0], het.weights[1]) and np.abs(het.means).mean() > 0.5
  # (1, 1) devices concentrate on fewer labels than IID ones (the heterogeneity the paper names).
  def top_share(fed):
    starts = np.concatenate([[0], np.cumsum(fed.sizes)]);
    return np.mean([np.bincount(fed.y[a:b], minlength=10).max() / (b - a)
                    for a, b in zip(starts[:-1], starts[1:])])
  assert top_share(het) > top_share(iid) + 0.2, (top_share(het), top_share(iid))
  # IID devices all follow one label distribution: no label is missing anywhere overall.
  assert np.bincount(iid.y, minlength=10).min() > 0


def test_generator_is_a_pure_function_of_its_seed():
  a, b = synthetic.generate(0.5, 0.5, False, 7), synthetic.generate(0.5, 0.5, False, 7)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  c = synthetic.generate(0.5, 0.5, False, 8)
  assert not np.array_equal(a.sizes, c.sizes)
  state = np.random.get_state()  # numpy's global stream is neither read nor advanced
  synthetic.generate(0.0, 0.0, True, 1)
  assert np.array_equal(np.random.get_state()[1], state[1])


def test_federation_names():
  assert synthetic.parse_name("iid") == (0.0, 0.0, True)
  assert synthetic.parse_name("synthetic_0.5_0.5") == (0.5, 0.5, False)
  assert synthetic.name(*synthetic.parse_name("1_1")) == "synthetic_1_1"
  for bad in ("2", "a_b", "1_1_1", "-1_1", ""):
    with pytest.raises(ValueError, match="not a synthetic federation"):
      synthetic.parse_name(bad)
  with pytest.raises(ValueError, match=">= 0"):
    synthetic.generate(-0.1, 0.0, False, 0)


def test_adaptive_mu_follows_the_papers_rule_on_a_scripted_loss_sequence():
  losses = [2.0, 2.1, 2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.5, 1.6, 1.0, 0.9, 0.8, 0.7, 0.6]
  expected = [
      0.5,  # the first round has nothing to compare with
      0.6,  # rose: +0.1
      0.6, 0.6, 0.6, 0.6,  # four falls
      0.5,  # the fifth consecutive fall: -0.1, and the count restarts
      0.5,  # a fall (1 of 5)
      0.5,  # equal: neither rose nor fell; the run of falls is broken
      0.6,  # rose
      0.6, 0.6, 0.6, 0.6, 0.5]  # five falls
  state, seen = adaptive_mu.init(0.5), []
  for loss in losses:
    state = adaptive_mu.update(state, jnp.float32(loss))
    seen.append(float(state.mu))
  np.testing.assert_allclose(seen, expected, atol=1e-6)
  # Never below 0: five falls from mu = 0 leave it at 0.
  state = adaptive_mu.init(0.0)
  for loss in (5.0, 4.0, 3.0, 2.0, 1.0, 0.5):
    state = adaptive_mu.update(state, jnp.float32(loss))
  assert float(state.mu) == 0.0 and int(state.falls) == 0
  # Vmapped over experiments: each follows its own losses.
  batch = adaptive_mu.init(jnp.array([0.0, 1.0]))
  for a, b in ((1.0, 1.0), (2.0, 0.5)):
    batch = jax.vmap(adaptive_mu.update)(batch, jnp.array([a, b]))
  np.testing.assert_allclose(batch.mu, [0.1, 1.0], atol=1e-6)


def _tiny(variant="fedprox", **overrides):
  """configs/synthetic.py at test size: 10 devices, 3 per round, E = 2, 4 rounds."""
  c = synthetic_config.get_config(variant)
  c.update(dict(num_clients=10, clients_per_round=3, local_epochs=2, num_rounds=4,
                tensorboard=False, checkpoint_every=2, partition_seed=1))
  if c.mode == "sweep":  # (a run refuses the sweep's fields)
    c.sweep.update(dict(seeds=1, stragglers="0.5", dissimilarity=False))
  c.update(overrides)
  return c


def test_synthetic_sweep_vmapped_equals_its_experiments_one_by_one_killed_and_resumed(
    tmp_path, monkeypatch):
  """A 2-federation sweep with adaptive mu: one program per federation == one experiment per
  program, two programs side by side, the latter killed by a failing checkpoint save in each
  federation and resumed (so the adaptive-mu state and the shared rows file must survive)."""
  from fedprox_jax.run import checkpoints
  c = _tiny("heterogeneity", checkpoint_every=1)
  c.sweep.update(dict(federations="iid,1_1", algorithms="fedavg,fedprox,fedprox_adaptive",
                      experiments_per_program=3, concurrent_programs=1))
  together = sweep.run(c, str(tmp_path / "together"))
  assert len(together) == 6  # 2 federations x 3 algorithms
  c.sweep.update(dict(experiments_per_program=1, concurrent_programs=2))
  real_save = checkpoints.Checkpoints.save

  class Killed(Exception):
    pass

  def save(self, t, state):
    if self.directory.endswith(stop_in) and t == 2:
      if stop_by is Killed:
        raise Killed
      os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID`: any thread may receive it
      deadline = time.time() + 30
      while not signals.received() and time.time() < deadline:
        time.sleep(0.01)
    return real_save(self, t, state)

  monkeypatch.setattr(checkpoints.Checkpoints, "save", save)
  monkeypatch.setitem(signals._state, "received", None)
  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  signals.install()
  try:
    # Programs 0-2 are Synthetic-IID's experiments, 3-5 Synthetic(1,1)'s. A failure: it is
    # raised, not the stop it causes in the program beside it. A SIGTERM: both stop.
    for stop_in, stop_by in (("program_1", Killed), ("program_4", errors.Interrupted)):
      with pytest.raises(stop_by, match=None if stop_by is Killed else "stopped by SIGTERM"):
        sweep.run(c, str(tmp_path / "alone"))
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  signals._state["received"] = None
  stop_in = "none"
  alone = sweep.run(c, str(tmp_path / "alone"))
  config = json.load(open(tmp_path / "alone" / "config.json"))
  assert config["sweep"]["concurrent_programs"] == 2
  assert together.keys() == alone.keys()
  for name in together:
    assert_same_rows(together[name], alone[name],
                     ("test_accuracy", "test_loss", "global_train_loss", "mu"),
                     rtol=2e-4, atol=2e-5, rounds=[1, 2, 3, 4])
  # The federations and algorithms really differ, so the comparison could fail.
  final = {n: r[-1]["global_train_loss"] for n, r in together.items()}
  assert final["synthetic_iid_fedavg_s0.5_seed0"] != final["synthetic_1_1_fedavg_s0.5_seed0"]
  assert final["synthetic_1_1_fedavg_s0.5_seed0"] != final["synthetic_1_1_fedprox_s0.5_seed0"]
  # Adaptive mu starts at the paper's values: 1 on Synthetic-IID, 0 on the others.
  assert together["synthetic_iid_fedprox_adaptive_s0.5_seed0"][0]["mu"] == 1.0
  assert together["synthetic_1_1_fedprox_adaptive_s0.5_seed0"][0]["mu"] == 0.0
  for out in ("summary.md", "heterogeneity_stragglers0.5.png", "results.csv"):
    assert os.path.exists(tmp_path / "together" / out), out
  summary = open(tmp_path / "together" / "summary.md").read()
  assert summary.index("synthetic_iid") < summary.index("synthetic_1_1")  # the paper's order
  assert "FedProx (adaptive mu)" in summary and "final training loss" in summary


def test_adaptive_mu_run_equals_the_sweeps_adaptive_experiment_and_resumes(tmp_path):
  """A single run with adaptive_mu and the sweep's fedprox_adaptive experiment compute the
  same rounds and the same mu; a run stopped after round 2 resumes with its mu state."""
  run_config = _tiny("adaptive", stragglers_fraction=0.5, num_rounds=6, mu=0.0)
  full = single.run(run_config, str(tmp_path / "run"))
  rows = read_rows(tmp_path / "run" / "metrics.jsonl")
  mus = [r["mu"] for r in rows]
  assert mus[0] == 0.0 and len(set(mus)) > 1, mus  # mu moved: the rule ran
  c = _tiny("heterogeneity", num_rounds=6)
  c.sweep.update(dict(algorithms="fedprox_adaptive", federations=""))
  swept = sweep.run(c, str(tmp_path / "sweep"))
  (name,) = swept
  assert_same_rows(rows, swept[name], ("test_accuracy", "test_loss", "mu"), rtol=2e-4,
                   atol=2e-5, rounds=range(1, 7))
  assert full["final_round"] == 6

  class Stop(Exception):
    pass

  def stop_after_round_2(t, row):
    if t == 2:
      raise Stop
  with pytest.raises(Stop):
    single.run(run_config, str(tmp_path / "resumed"), on_round=stop_after_round_2)
  single.run(run_config, str(tmp_path / "resumed"))
  assert read_rows(tmp_path / "resumed" / "metrics.jsonl") == rows


@pytest.mark.parametrize("field,value,match", [
    ("data", "cifar", "config.data='cifar': use one of"),
    ("synthetic.alpha", -1.0, "config.synthetic.alpha=-1.0: must be a finite number >= 0"),
    ("synthetic.beta", float("nan"), "config.synthetic.beta=nan"),
    ("model", "cnn", "use --config.model=mlr"),
    ("protocol", "seed", "use --config.protocol=paper"),
    ("sweep.adaptive_mu_init", -0.5, "config.sweep.adaptive_mu_init=-0.5: must be a finite"),
    ("mu", -1.0, "config.mu=-1.0: must be a finite number >= 0"),
    ("iid", True, "Synthetic-IID is --config.synthetic.iid=True"),
])
def test_bad_synthetic_configs_are_one_clear_error(field, value, match):
  c = _tiny()
  c.update_from_flattened_dict({field: value})
  with pytest.raises(ConfigError, match=match):
    config_lib.resolve(c)


def test_bad_federation_lists_and_federations_with_mnist_are_refused():
  c = config_lib.resolve(_tiny("heterogeneity"))
  c.sweep.federations = "iid,2"
  with pytest.raises(ConfigError, match="config.sweep.federations: '2' is not a synthetic"):
    grid_lib.experiment_grid(c)
  c.sweep.federations = "iid,iid"
  with pytest.raises(ConfigError, match="more than once"):
    grid_lib.experiment_grid(c)
  from configs import mnist as mnist_config
  m = mnist_config.get_config("figure1_paper")
  m.sweep.federations = "iid"
  with pytest.raises(ConfigError, match="applies to data='synthetic' only"):
    config_lib.resolve(m)
  # A split of the partition axis on a federation that comes partitioned: refused, not ignored.
  s = _tiny("heterogeneity")
  s.sweep.splits = "labeldir0.5"
  with pytest.raises(ConfigError, match="config.sweep.splits='labeldir0.5': data='synthetic' "
                                        "comes partitioned into federations"):
    config_lib.resolve(s)


def test_synthetic_data_is_split_90_10_per_device_and_recorded():
  c = config_lib.resolve(_tiny())
  exp = experiment.prepare_data(c, None)
  fed = synthetic.generate(1.0, 1.0, False, 1, 10)
  np.testing.assert_array_equal(np.asarray(exp.train.sizes), (0.9 * fed.sizes).astype(int))
  assert len(exp.test_y) == fed.sizes.sum() - (0.9 * fed.sizes).astype(int).sum()
  assert exp.stats["federation"] == "synthetic_1_1" and exp.stats["clients"] == 10
  assert exp.train.x.shape[1:] == (60,)


def test_launch_runs_a_synthetic_config_and_its_help_lists_the_synthetic_fields(tmp_path):
  import subprocess
  import sys
  launch = [sys.executable, os.path.join(ROOT, "launch.py")]
  shown = subprocess.run(launch + ["--config=configs/synthetic.py:heterogeneity", "--help"],
                         capture_output=True, text=True, cwd=ROOT)
  assert shown.returncode == 0
  for field in ("synthetic.alpha", "synthetic.iid", "sweep.federations", "adaptive_mu",
                "lr", "weighting"):  # its own fields and the base's (configs/mnist.py)
    assert f"\n  {field} " in shown.stdout, field
  result = subprocess.run(
      launch + ["--config=configs/synthetic.py:adaptive", "--config.num_rounds=2",
                "--config.num_clients=10", "--config.clients_per_round=3",
                "--config.local_epochs=1", f"--workdir={tmp_path}"],
      capture_output=True, text=True, cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  rows = read_rows(tmp_path / "metrics.jsonl")
  assert [r["round"] for r in rows] == [1, 2] and rows[0]["mu"] == 0.0
  bad = subprocess.run(launch + ["--config=configs/synthetic.py:fedprox",
                                 "--config.synthetic.alpha=-1", f"--workdir={tmp_path}/bad"],
                       capture_output=True, text=True, cwd=ROOT)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith("error: config.synthetic.alpha=-1.0")
