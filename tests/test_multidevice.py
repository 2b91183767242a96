"""Sharding over devices: the same numbers on 1, 2, 4 and 8 (forced) CPU host devices.

Each check runs in a fresh process, because the device count is fixed when JAX starts.
"""

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_with_devices(code: str, devices: int = 8):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
  result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stdout


def test_sharded_round_equals_single_device_round():
  _run_with_devices("""
    import jax
    from helpers import make_federated_data, tree_max_abs_diff
    from fedprox_jax import distributed, models, server
    assert jax.device_count() == 8
    data = make_federated_data([1, 7, 10, 23, 95, 12, 40, 5, 66, 3])
    for name in ("mlr", "cnn"):
      model = models.make_model(name)
      params = models.init_params(model, jax.random.key(0))
      hp = server.HParams.create(0.05, 1.0, 0.5, False, 5)
      # 5 clients per round: not a multiple of 2, 4 or 8 devices; 8 lanes, the spare ones empty.
      outs = {}
      for n in (1, 2, 4, 8):
        mesh = distributed.make_mesh(n)
        spec = server.RoundSpec(clients_per_round=5, local_epochs=2, batch_size=4,
                                max_client_size=95, num_lanes=8, mesh=mesh)
        round_fn = server.make_round_fn(model.apply, spec)
        out, metrics = round_fn(params, data, hp, jax.random.key(3))
        outs[n] = (out, float(metrics.train_loss))
        if n > 1:  # really spread: each device holds 8 / n lanes of parameters
          hlo = round_fn.lower(params, data, hp, jax.random.key(3)).compile().as_text()
          assert "all-reduce" in hlo
      for n in (2, 4, 8):
        assert tree_max_abs_diff(outs[n][0], outs[1][0]) < 1e-5, (name, n)
        assert abs(outs[n][1] - outs[1][1]) < 1e-5
      looped, _ = server.looped_round(model.apply, spec, params, data, hp, jax.random.key(3))
      assert tree_max_abs_diff(outs[8][0], looped) < 2e-5
    print("ok")
  """)


def test_sharded_sweep_equals_unsharded_sweep():
  _run_with_devices("""
    import numpy as np
    from fedprox_jax import distributed, models, simulate, sweep
    from test_sweep import _tiny_config, _tiny_mnist
    c = _tiny_config()
    c.sweep.stragglers = "0.5"  # 2 algorithms x 1 level x 2 seeds = 4 experiments...
    c.sweep.algorithms = "fedavg,fedprox_mu0,fedprox"  # ... made 6: not a multiple of 4
    exp = simulate.prepare_experiment(c, _tiny_mnist())
    specs = sweep.experiment_grid(c)
    assert len(specs) == 6
    model = models.make_model("mlr")
    base = sweep.run_experiments(c, exp, specs, model, {2, 3}, distributed.make_mesh(1))
    for n in (2, 4, 8):
      sharded = sweep.run_experiments(c, exp, specs, model, {2, 3}, distributed.make_mesh(n))
      assert sharded.keys() == base.keys()
      for name in base:
        for a, b in zip(base[name], sharded[name]):
          for k in ("test_accuracy", "train_loss", "dissimilarity"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5)
    print("ok")
  """)


def test_launch_uses_all_devices_and_matches_one_device(tmp_path):
  out = _run_with_devices(f"""
    import json, sys
    from fedprox_jax import simulate
    from test_sweep import _tiny_mnist
    from configs import mnist as mnist_config
    rows = {{}}
    for n in (1, 8):
      c = mnist_config.get_config("fedprox")
      c.update(dict(model="mlr", num_clients=20, clients_per_round=5, num_rounds=3,
                    local_epochs=2, num_devices=n, tensorboard=False))
      workdir = "{tmp_path}/run%d" % n
      simulate.run(c, workdir, mnist=_tiny_mnist())
      rows[n] = [json.loads(l) for l in open(workdir + "/metrics.jsonl")]
    for a, b in zip(rows[1], rows[8]):
      assert abs(a["test_accuracy"] - b["test_accuracy"]) < 1e-6
      assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
    print("lanes", rows[8][0]["executed_steps"] // max(1, rows[1][0]["executed_steps"]))
  """)
  assert "lanes" in out


def test_two_processes_on_localhost_match_one_process(tmp_path):
  """Multi-host path: 2 processes x 2 CPU devices (gloo collectives) == 1 process, 1 device."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  script = tmp_path / "worker.py"
  script.write_text(textwrap.dedent("""
    import json, sys
    from fedprox_jax import distributed, simulate
    distributed.maybe_initialize()
    import jax
    from test_sweep import _tiny_mnist
    from configs import mnist as mnist_config
    c = mnist_config.get_config("fedprox")
    c.update(dict(model="mlr", num_clients=20, clients_per_round=5, num_rounds=3,
                  local_epochs=2, tensorboard=False, num_devices=int(sys.argv[1])))
    simulate.run(c, sys.argv[2], mnist=_tiny_mnist())
    print("devices", jax.device_count(), "process", jax.process_index())
  """))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
  single = subprocess.run([sys.executable, str(script), "1", str(tmp_path / "single")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]
  multi_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2")
  procs = [subprocess.Popen([sys.executable, str(script), "0", str(tmp_path / "multi")], cwd=ROOT,
                            env=dict(multi_env, JAX_PROCESS_ID=str(i)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    assert "devices 4" in out
  read = lambda d: [json.loads(l) for l in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
  for a, b in zip(read("single"), read("multi")):
    assert a["round"] == b["round"]
    assert abs(a["test_accuracy"] - b["test_accuracy"]) < 1e-6
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
