"""The CNN paths chosen by measurement: timed once per machine and shapes, cached, re-measured
when the cache is damaged or stale, overridden by explicit fields, recorded in the config."""

import json
import re

import pytest

from configs import mnist as mnist_config
from fedprox_jax import cache
from fedprox_jax.core import models
from fedprox_jax.run import autotune, defaults
from fedprox_jax.run import config as config_lib


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
  monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
  monkeypatch.setattr(autotune, "_load_per_core", lambda: 0.0)  # an idle machine
  autotune.choose.cache_clear()
  yield tmp_path / autotune.CACHE_FILE
  autotune.choose.cache_clear()


@pytest.fixture
def fake_measure(monkeypatch):
  """Replaces the timing with a fixed, counted answer (the cache logic is under test)."""
  calls = []

  def measure(model, batch_size, max_lanes, eval_batch_size, *shape):
    calls.append((model, batch_size, max_lanes, eval_batch_size))
    return autotune.Choice("patches", max_lanes, "im2col", 1.5,
                           {"patches/1": 2.0, f"patches/{max_lanes}": 1.0, "im2col/1": 3.0},
                           {"im2col": 1.0, "xla": 2.0})
  monkeypatch.setattr(autotune, "measure", measure)
  return calls


def test_measure_times_every_candidate_and_picks_the_fastest():
  choice = autotune.measure("niid_cnn", batch_size=4, max_lanes=2, eval_batch_size=8)
  assert set(choice.eval_ms) == set(models.CONV_IMPLS)
  assert {f"{impl}/1" for impl in models.CONV_IMPLS} <= set(choice.train_ms)
  wider = set(choice.train_ms) - {f"{impl}/1" for impl in models.CONV_IMPLS}
  best_one_lane = min(models.CONV_IMPLS, key=lambda i: choice.train_ms[f"{i}/1"])
  assert wider == {f"{best_one_lane}/2"}  # more lanes are tried for the fastest only
  assert all(ms > 0 for ms in [*choice.train_ms.values(), *choice.eval_ms.values()])
  assert f"{choice.conv_impl}/{choice.num_lanes}" == min(choice.train_ms, key=choice.train_ms.get)
  assert choice.eval_conv_impl == min(choice.eval_ms, key=choice.eval_ms.get)
  assert choice.seconds > 0


def test_the_choice_is_measured_once_then_read_from_the_cache(fresh_cache, fake_measure):
  first = autotune.choose("cnn", 10, 2, 50)
  assert fake_measure == [("cnn", 10, 2, 50)] and first.seconds == 1.5
  entries = json.loads(fresh_cache.read_text())
  (key, entry), = entries.items()
  assert json.loads(key)["cpu"] == autotune.cpu_model() and json.loads(key)["model"] == "cnn"
  assert entry["conv_impl"] == "patches" and entry["num_lanes"] == 2
  autotune.choose.cache_clear()  # a new process
  again = autotune.choose("cnn", 10, 2, 50)
  assert len(fake_measure) == 1 and again.seconds == 0  # from the cache
  assert again._replace(seconds=1.5) == first
  autotune.choose("cnn", 20, 2, 50)  # other shapes: measured for them
  assert len(fake_measure) == 2 and len(json.loads(fresh_cache.read_text())) == 2


@pytest.mark.parametrize("damage", [
    "not json{", "[1, 2]",
    lambda e: {k: {**v, "conv_impl": "fft"} for k, v in e.items()},   # an unknown candidate
    lambda e: {k: {**v, "num_lanes": 3} for k, v in e.items()},       # more lanes than allowed
    lambda e: {k: {**v, "train_ms": {"patches/2": -1}} for k, v in e.items()},
    lambda e: {k: {**v, "train_ms": [1.0]} for k, v in e.items()},
    lambda e: {k: {**v, "eval_conv_impl": "xla"} for k, v in e.items()},  # not its fastest
    lambda e: {k: {"conv_impl": "im2col"} for k in e},                # fields missing
])
def test_a_damaged_cache_entry_is_measured_again_never_trusted(fresh_cache, fake_measure, damage):
  autotune.choose("cnn", 10, 2, 50)
  text = damage if isinstance(damage, str) else json.dumps(
      damage(json.loads(fresh_cache.read_text())))
  fresh_cache.write_text(text)
  autotune.choose.cache_clear()
  assert autotune.choose("cnn", 10, 2, 50).conv_impl == "patches"
  assert len(fake_measure) == 2
  assert len(json.loads(fresh_cache.read_text())) == 1  # rewritten whole


def test_another_jax_version_or_cpu_is_another_key(fresh_cache, fake_measure, monkeypatch):
  autotune.choose("cnn", 10, 2, 50)
  autotune.choose.cache_clear()
  monkeypatch.setattr(autotune, "cpu_model", lambda: "Some Other CPU")
  autotune.choose("cnn", 10, 2, 50)
  autotune.choose.cache_clear()
  monkeypatch.setattr(autotune.jax, "__version__", "0.0.1")
  autotune.choose("cnn", 10, 2, 50)
  assert len(fake_measure) == 3


def test_an_unwritable_cache_only_costs_the_measurement(tmp_path, monkeypatch, fake_measure):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  monkeypatch.setenv(cache.CACHE_ENV, str(blocker))  # the cache directory cannot be made
  autotune.choose.cache_clear()
  try:
    assert autotune.choose("cnn", 10, 2, 50).conv_impl == "patches"
  finally:
    autotune.choose.cache_clear()
  assert blocker.read_text() == "" and len(fake_measure) == 1


def _resolved(**fields):
  """Resolved, then what set-up fills with MNIST's shapes (``experiment.prepare``)."""
  c = mnist_config.get_config("fedprox")
  c.update(fields)
  return config_lib.fill_measured(config_lib.resolve(c), (28, 28, 1), 10)


def test_resolve_leaves_the_measured_paths_to_set_up(fresh_cache, fake_measure):
  c = mnist_config.get_config("fedprox")
  c = config_lib.resolve(c)
  assert (c.conv_impl, c.num_lanes, c.eval_conv_impl) == ("auto", 0, "auto")
  assert fake_measure == []  # nothing timed before the data's shapes are known


def test_set_up_measures_for_the_datas_shapes(fresh_cache, monkeypatch):
  shapes = []

  def measure(model, batch_size, max_lanes, eval_batch_size, input_shape, num_classes):
    shapes.append((tuple(input_shape), num_classes))
    return autotune.Choice("xla", 1, "xla", 1.0, {"xla/1": 1.0}, {"xla": 1.0})
  monkeypatch.setattr(autotune, "measure", measure)
  c = config_lib.resolve(mnist_config.get_config("fedprox"))
  assert config_lib.fill_measured(c, (32, 32, 3), 62).conv_impl == "xla"
  assert shapes == [((32, 32, 3), 62)]


def test_resolve_fills_what_was_left_at_auto_and_records_the_choice(fresh_cache, fake_measure):
  c = _resolved()
  assert (c.conv_impl, c.num_lanes, c.eval_conv_impl) == ("patches", 2, "im2col")
  assert c.autotuned.startswith("conv_impl=patches num_lanes=2 eval_conv_impl=im2col")
  assert fake_measure == [("cnn", 10, 2, 50)]
  assert config_lib.resolve(c).to_dict() == c.to_dict()  # resolved once means resolved


def test_explicit_fields_override_the_choice(fresh_cache, fake_measure):
  c = _resolved(conv_impl="xla", eval_conv_impl="xla_nchw")
  # the lanes were timed with another convolution: the table's
  assert (c.conv_impl, c.num_lanes, c.eval_conv_impl) == ("xla", 1, "xla_nchw")
  c = _resolved(conv_impl="im2col", eval_conv_impl="xla", num_lanes=3)
  assert (c.conv_impl, c.num_lanes, c.eval_conv_impl, c.autotuned) == ("im2col", 3, "xla", "")
  assert len(fake_measure) == 1  # the second had nothing left to choose


def test_no_measurement_without_autotune_for_the_mlr_or_in_a_sweeps_lanes(fresh_cache,
                                                                          fake_measure,
                                                                          monkeypatch):
  c = _resolved(autotune=False)
  assert (c.conv_impl, c.num_lanes, c.eval_conv_impl, c.autotuned) == ("im2col", 1, "xla", "")
  c = _resolved(model="mlr")
  assert (c.conv_impl, c.autotuned) == ("none", "")
  with monkeypatch.context() as m:  # several processes: each would time its own host
    m.setattr(defaults.jax, "process_count", lambda: 2)
    assert _resolved().conv_impl == "im2col"
  assert fake_measure == []
  c = _resolved(mode="sweep")
  assert fake_measure == [("cnn", 10, 1, 50)]  # a sweep's programs share the cores already
  assert (c.conv_impl, c.num_lanes) == ("patches", 1)


@pytest.mark.parametrize("load,spread,why", [
    (1.5, 1.0, "other jobs ran on the machine \\(load 1.50 per core\\)"),
    (0.0, 1.8, "the timings were unsteady \\(the fastest's spread 1.80x\\)"),
])
def test_a_choice_measured_on_a_busy_machine_is_provisional(
    fresh_cache, fake_measure, monkeypatch, caplog, load, spread, why):
  """Cached as it was, a choice measured under load was used for good."""
  monkeypatch.setattr(autotune, "_load_per_core", lambda: load)
  real = autotune.measure
  monkeypatch.setattr(autotune, "measure", lambda *a: real(*a)._replace(spread=spread))
  first = autotune.choose("cnn", 10, 2, 50)
  assert first.conv_impl == "patches"
  (entry,) = json.loads(fresh_cache.read_text()).values()
  assert re.fullmatch(why, entry["busy"]), entry
  assert any(re.search(why + ", so the choice is cached as provisional", r.getMessage())
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  autotune.choose.cache_clear()  # a new process on a machine as busy: the entry is used
  monkeypatch.setattr(autotune, "_load_per_core", lambda: 1.0)
  assert autotune.choose("cnn", 10, 2, 50).seconds == 0 and len(fake_measure) == 1
  autotune.choose.cache_clear()  # a new process on an idle machine: measured again
  monkeypatch.setattr(autotune, "_load_per_core", lambda: 0.0)
  monkeypatch.setattr(autotune, "measure", real)
  autotune.choose("cnn", 10, 2, 50)
  assert len(fake_measure) == 2
  (entry,) = json.loads(fresh_cache.read_text()).values()
  assert "busy" not in entry  # and from now on used as it is
  autotune.choose.cache_clear()
  autotune.choose("cnn", 10, 2, 50)
  assert len(fake_measure) == 2


def test_the_timing_says_how_long_before_it_starts(fresh_cache, fake_measure, caplog):
  caplog.set_level("INFO")
  autotune.choose("cnn", 10, 2, 50)
  assert any("before the run starts: about 5-15 s on 2 idle cores" in r.getMessage()
             for r in caplog.records)
