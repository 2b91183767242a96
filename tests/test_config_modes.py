"""A field is never silently ignored: a run refuses the sweep's fields, a sweep the run's choice
of algorithm; one data set written two ways is refused; bad values and flags are one line that
names what to do. (The probe of 2026-12-03: each of these ran, wrong or with a traceback.)"""

import os
import subprocess
import sys

import pytest

from fedprox_jax import errors
from fedprox_jax.run import config as config_lib
from helpers import ROOT, mnist_config

sys.path.insert(0, ROOT)
from configs import niid_bench, synthetic  # noqa: E402


def _launch(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=300)


def _one_error_line(result) -> str:
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) >= 1 and "Traceback" not in result.stderr, (
      result.stderr[-2000:])
  assert lines[-1].startswith("error: "), lines
  return lines[-1]


def test_the_sweep_defaults_are_those_of_the_config_files():
  """A run's sweep fields are compared with SWEEP_DEFAULTS: every run variant must hold them."""
  for module in (mnist_config, synthetic):
    for variant in module.VARIANTS:
      c = module.get_config(variant)
      if c.mode == "single":
        assert c.sweep.to_dict() == config_lib.SWEEP_DEFAULTS, (module.__name__, variant)
        config_lib.check_mode_fields(c)
  for module in (mnist_config, synthetic, niid_bench):  # and every sweep variant passes
    for variant in module.VARIANTS:
      c = module.get_config(variant)
      if c.mode == "sweep":
        config_lib.check_mode_fields(c)


@pytest.mark.parametrize("field,value", [
    ("algorithms", "fedavg,scaffold"), ("seeds", 3), ("stragglers", "0"), ("mu", 0.5),
    ("partitions", 2), ("adaptive_mu_init", 0.1)])
def test_a_run_refuses_a_sweep_field_it_would_ignore(field, value):
  c = mnist_config.get_config("fedprox")
  c.sweep[field] = value
  with pytest.raises(errors.ConfigError, match=rf"config.sweep.{field}=.* applies to a sweep, "
                                               r"and this is a run .*--config.mode=sweep"):
    config_lib.resolve(c)
  c.mode = "sweep"  # the same field, in the mode that uses it
  config_lib.check_mode_fields(c)


@pytest.mark.parametrize("field,value", [("algorithm", "scaffold"), ("adaptive_mu", True)])
def test_a_sweep_refuses_a_runs_algorithm(field, value):
  c = mnist_config.get_config("figure1_paper")
  c[field] = value
  with pytest.raises(errors.ConfigError, match=rf"config.{field}=.* applies to a run "
                                               r".*this is a sweep.*sweep.algorithms"):
    config_lib.resolve(c)


def test_the_command_line_refuses_fields_of_the_other_mode():
  # On the command line even a value equal to the default is refused: it was asked for.
  line = _one_error_line(_launch("--config=configs/mnist.py:fedprox",
                                 "--config.sweep.algorithms=fedavg,fedprox_mu0,fedprox"))
  assert "config.sweep.algorithms=" in line and "applies to a sweep" in line
  line = _one_error_line(_launch("--config=configs/mnist.py:figure1_paper", "--config.mu=1.0"))
  assert "config.mu=1.0 applies to a run" in line
  line = _one_error_line(_launch("--config=configs/mnist.py:figure1_paper",
                                 "--config.algorithm=scaffold"))
  assert "config.algorithm='scaffold' applies to a run" in line
  # the same fields, where they apply, are no error (here: the next check, a bad value)
  line = _one_error_line(_launch("--config=configs/mnist.py:figure1_paper",
                                 "--config.sweep.algorithms=fedavg,scaffold",
                                 "--config.sweep.mu=-1"))
  assert "sweep.mu=-1.0: must be a finite number > 0" in line


@pytest.mark.parametrize("splits,same", [
    ("labeldir0.5,labeldir0.50", ("labeldir0.5", "labeldir0.50")),
    ("label2,label02", ("label2", "label02")),
    ("iid,quantity0.5,quantity.5", ("quantity0.5", "quantity.5")),
])
def test_one_split_written_two_ways_is_refused(splits, same):
  c = mnist_config.get_config("figure1_paper")
  c.sweep.splits = splits
  with pytest.raises(errors.ConfigError, match=rf"config.sweep.splits: '{same[0]}' and "
                                               rf"'{same[1]}' are the same data set"):
    config_lib.resolve(c)
  c.sweep.splits = "labeldir0.5,label2,quantity0.5"  # different splits are fine
  assert len(config_lib.federations(config_lib.resolve(c))) == 3


def test_one_federation_written_two_ways_is_refused():
  c = synthetic.get_config("heterogeneity")
  c.sweep.federations = "iid,0_0,0.0_0.0"
  with pytest.raises(errors.ConfigError, match="'0_0' and '0.0_0.0' are the same data set"):
    config_lib.resolve(c)


@pytest.mark.parametrize("sigma", [float("inf"), 1e12, float("nan"), -1.0, 51.0])
def test_lognormal_sigma_outside_its_bounds_names_them(sigma):
  c = mnist_config.get_config("fedprox")
  c.lognormal_sigma = sigma
  with pytest.raises(errors.ConfigError, match=r"config.lognormal_sigma=.*: must be > 0, finite "
                                               r"and at most 50"):
    config_lib.resolve(c)


def test_flag_mistakes_are_one_plain_line():
  line = _one_error_line(_launch("--config=configs/mnist.py:fedprox", "--config.modle=mlr"))
  assert line == ("error: the config has no field 'modle' (did you mean 'mode'?): --help lists "
                  "the fields --config.FIELD=VALUE can set.")
  result = _launch("--config.model=mlr")  # no --config at all
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.startswith("error: --config is missing: name a config first, e.g. "
                                  "--config=configs/mnist.py:fedprox")


def test_help_lists_every_variant_of_every_config_file():
  result = _launch("--help")
  assert result.returncode == 0, result.stderr[-2000:]
  for module, name in ((mnist_config, "mnist.py"), (synthetic, "synthetic.py"),
                       (niid_bench, "niid_bench.py")):
    line = next(l for l in result.stdout.splitlines() if l.strip().startswith(f"configs/{name}"))
    for variant in module.VARIANTS:
      assert variant in line, (name, variant, line)
  assert "--config.mode=sweep" in result.stdout


def _registered_names():
  from fedprox_jax.core import algorithms
  return sorted(algorithms.REGISTRY) + ["fedprox_mu0.5"]


@pytest.mark.parametrize("name", _registered_names())
def test_a_runs_algorithm_is_the_sweeps_experiment_of_that_name(name):
  """One name, one algorithm: a run with ``algorithm=NAME`` trains with exactly the traced
  hyper-parameters (mu, straggler rule, server and own ones) of the sweep's NAME experiment at
  the run's straggler level and seed, whatever the variant's mu and drop_stragglers were."""
  import jax
  import numpy as np
  from fedprox_jax.core import algorithms
  from fedprox_jax.run import experiment, grid as grid_lib
  for variant in ("fedprox", "fedavg"):  # mu 1 / partial work kept, mu 0 / dropped
    c = mnist_config.get_config(variant)
    c.update(dict(algorithm=name, mu=0.7 if algorithms.get(name).mu_rule in (
        "config", "adaptive") else c.mu, stragglers_fraction=0.5))
    run = config_lib.resolve(c)
    s = mnist_config.get_config("figure1")
    s.sweep.update(dict(algorithms=name, stragglers="0.5", seeds=1, mu=0.7,
                        adaptive_mu_init=0.7))
    s = config_lib.resolve(s)
    (point,) = grid_lib.experiment_grid(s)
    assert (run.mu, run.drop_stragglers, run.adaptive_mu) == (
        point.mu, point.drop_stragglers, point.adaptive), (variant, name)
    got = experiment.hparams(run)
    want = experiment.hparams(s, algorithms.get(name), mu=point.mu,
                              drop_stragglers=point.drop_stragglers,
                              stragglers_fraction=point.stragglers_fraction)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      np.testing.assert_array_equal(a, b, err_msg=f"{variant} {name}")
    assert experiment.run_algorithm(run).hooks == algorithms.get(name).hooks


def test_a_runs_field_its_named_algorithm_replaces_is_refused():
  c = mnist_config.get_config("fedprox")
  c.algorithm = "scaffold"
  with pytest.raises(errors.ConfigError, match=r"config.mu=0.5 does not apply to "
                     r"algorithm='scaffold', which runs with mu=0.0 as it does in a sweep"):
    c.mu = 0.5
    config_lib.check_mode_fields(c, given=("algorithm", "mu"))
  c.mu = 0.0  # the guide's command: the value the algorithm runs with is accepted
  config_lib.check_mode_fields(c, given=("algorithm", "mu"))
  c.update(dict(algorithm="fedavg", drop_stragglers=False))
  with pytest.raises(errors.ConfigError, match="config.drop_stragglers=False does not apply"):
    config_lib.check_mode_fields(c, given=("algorithm", "drop_stragglers"))
  c = mnist_config.get_config("fedavg")  # mu = 0: 'fedprox' is FedProx with mu > 0
  c.algorithm = "fedprox"
  with pytest.raises(errors.ConfigError, match=r"config.mu=0.0: algorithm='fedprox' is "
                                               r"FedProx with mu > 0"):
    config_lib.resolve(c)
  line = _one_error_line(_launch("--config=configs/mnist.py:fedprox",
                                 "--config.algorithm=feddyn", "--config.mu=1.0"))
  assert "config.mu=1.0 does not apply to algorithm='feddyn'" in line
