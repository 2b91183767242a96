"""Sharding over devices: the same numbers on 1, 2, 4 and 8 (forced) CPU host devices.

Each check runs in a fresh process, because the device count is fixed when JAX starts.
"""

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
    from fedprox_jax.run import distributed
    from fedprox_jax.core import models, reference, rounds
    assert jax.device_count() == 8
    data = make_federated_data([1, 7, 10, 23, 95, 12, 40, 5, 66, 3])
    for name in ("mlr", "cnn"):
      model = models.make_model(name)
      params = models.init_params(model, jax.random.key(0))
      hp = rounds.HParams.create(0.05, 1.0, 0.5, False, 5)
      # 5 clients per round: not a multiple of 2, 4 or 8 devices; 8 lanes, the spare ones empty.
      outs = {}
      for n in (1, 2, 8):
        mesh = distributed.make_mesh(n)
        spec = rounds.RoundSpec(clients_per_round=5, local_epochs=2, batch_size=4,
                                max_client_size=95, num_lanes=8, mesh=mesh,
                                sampling="uniform", straggler_rule="exact", weighting="samples")
        round_fn = rounds.make_round_fn(model.apply, spec)
        out, metrics = round_fn(params, data, hp, jax.random.key(3))
        outs[n] = (out, float(metrics.train_loss))
        if n > 1:  # really spread: each device holds 8 / n lanes of parameters
          hlo = round_fn.lower(params, data, hp, jax.random.key(3)).compile().as_text()
          assert "all-reduce" in hlo
      for n in (2, 8):
        assert tree_max_abs_diff(outs[n][0], outs[1][0]) < 1e-5, (name, n)
        assert abs(outs[n][1] - outs[1][1]) < 1e-5
      looped, _ = reference.looped_round(model.apply, spec, params, data, hp, jax.random.key(3))
      assert tree_max_abs_diff(outs[8][0], looped) < 2e-5
    # SCAFFOLD with momentum clients: the variates' changes are summed over the devices too.
    import dataclasses
    from fedprox_jax.core import algorithms
    model = models.make_model("mlr")
    params = models.init_params(model, jax.random.key(0))
    hp = rounds.HParams.create(0.05, 0.0, 0.5, False, 5, momentum=0.5)
    states = {}
    for n in (1, 8):
      spec = rounds.RoundSpec(clients_per_round=5, local_epochs=2, batch_size=4,
                              max_client_size=95, num_lanes=8, mesh=distributed.make_mesh(n),
                              sampling="uniform", straggler_rule="exact", weighting="samples",
                              **algorithms.round_statics(algorithms.SCAFFOLD, 0.5))
      state = rounds.init_server_state(spec, params, 10, hp)
      for t in (1, 2):
        state, _ = rounds.make_round_fn(model.apply, spec, with_state=True)(
            state, data, hp, jax.random.key(t))
      states[n] = state
    looped = rounds.init_server_state(spec, params, 10, hp)
    for t in (1, 2):
      looped, _ = reference.looped_round_step(model.apply, spec, looped, data, hp,
                                              jax.random.key(t))
    assert tree_max_abs_diff(states[8].params, states[1].params) < 1e-5
    assert tree_max_abs_diff(states[8].state, states[1].state) < 2e-4
    assert tree_max_abs_diff(states[8].state, looped.state) < 5e-4
    assert tree_max_abs_diff(states[8].state.server, jax.tree_util.tree_map(
        lambda a: 0 * a, states[8].state.server)) > 1e-3
    print("ok")
  """)


def test_sharded_sweep_equals_unsharded_sweep():
  _run_with_devices("""
    from fedprox_jax.run import distributed, experiment, loop, sweep
    from fedprox_jax.run import grid as grid_lib, program as program_lib
    from helpers import assert_same_rows, tiny_mnist, tiny_sweep_config
    c = tiny_sweep_config()
    c.sweep.stragglers = "0.5"  # 2 algorithms x 1 level x 2 seeds = 4 experiments...
    c.sweep.algorithms = "fedavg,fedprox_mu0,fedprox"  # ... made 6: not a multiple of 4
    setup = experiment.prepare(c, tiny_mnist(), lanes_over_devices=False)
    specs = grid_lib.experiment_grid(c)
    assert len(specs) == 6
    schedule = loop.Schedule(3, eval_every=2, checkpoint_every=3)  # rows after rounds 2 and 3
    base, _ = program_lib.run_program(setup, specs, schedule, distributed.make_mesh(1))
    for n in (2, 8):  # 6 experiments: 3 per device; padded to 8
      sharded, _ = program_lib.run_program(setup, specs, schedule, distributed.make_mesh(n))
      assert sharded.keys() == base.keys() and len(base) == 6
      for name in base:
        assert_same_rows(base[name], sharded[name],
                         ("test_accuracy", "global_train_loss", "dissimilarity"),
                         rtol=1e-4, atol=1e-5, rounds=[2, 3])
    print("ok")
  """)


def test_launch_uses_all_devices_and_matches_one_device(tmp_path):
  _run_with_devices(f"""
    import json
    from fedprox_jax.run import single
    from helpers import assert_same_rows, read_rows, tiny_mnist, tiny_run_config
    rows, configs = {{}}, {{}}
    for n in (0, 1):  # 0 = all (8) devices
      workdir = "{tmp_path}/run%d" % n
      single.run(tiny_run_config(num_rounds=3, num_devices=n), workdir, source=tiny_mnist())
      rows[n] = read_rows(workdir + "/metrics.jsonl")
      configs[n] = json.load(open(workdir + "/config.json"))
    # config.json records what was used: 8 devices, lanes rounded up to fill them.
    assert (configs[0]["num_devices"], configs[0]["num_lanes"]) == (8, 8), configs[0]
    assert (configs[1]["num_devices"], configs[1]["num_lanes"]) == (1, 1), configs[1]
    assert_same_rows(rows[0], rows[1], ("test_accuracy", "local_train_loss"), atol=1e-5,
                     rounds=[1, 2, 3])
    assert rows[0][0]["useful_steps"] == rows[1][0]["useful_steps"] > 0
    print("ok")
  """)


def _two_processes(tmp_path, body: str):
  """Runs ``body`` (with ``mode`` = sys.argv[1], ``workdir`` = sys.argv[2]) once in one
  process with one device, then as 2 processes x 2 CPU devices (gloo) on one shared workdir."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  script = tmp_path / "worker.py"
  script.write_text(textwrap.dedent("""
    import sys
    from fedprox_jax.run import distributed
    distributed.maybe_initialize()
    import jax
    from helpers import tiny_mnist, tiny_run_config, tiny_sweep_config
    workdir = sys.argv[2]
    num_devices = int(sys.argv[1])
  """) + textwrap.dedent(body) + textwrap.dedent("""
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


def test_two_processes_on_localhost_match_one_process(tmp_path):
  """Multi-host path: 2 processes x 2 CPU devices (gloo collectives) == 1 process, 1 device."""
  from helpers import assert_same_rows, read_rows
  _two_processes(tmp_path, """
    from fedprox_jax.run import single
    single.run(tiny_run_config(num_rounds=3, num_devices=num_devices), workdir,
                 source=tiny_mnist())
  """)
  # Only process 0 writes: a second writer would duplicate every row.
  assert_same_rows(read_rows(tmp_path / "single" / "metrics.jsonl"),
                   read_rows(tmp_path / "multi" / "metrics.jsonl"),
                   ("test_accuracy", "local_train_loss"), atol=1e-5, rounds=[1, 2, 3])


def test_two_process_sweep_matches_one_process(tmp_path):
  """A sweep over 2 processes x 2 devices (experiments spread over all 4) == 1 process."""
  from fedprox_jax.report import results as results_lib
  _two_processes(tmp_path, """
    from fedprox_jax.run import sweep
    c = tiny_sweep_config(num_devices=num_devices)
    c.sweep.seeds = 1  # 4 experiments: one per device
    sweep.run(c, workdir, source=tiny_mnist())
  """)
  single = results_lib.read_results_csv(str(tmp_path / "single" / "results.csv"))
  multi = results_lib.read_results_csv(str(tmp_path / "multi" / "results.csv"))
  assert len(single) == len(multi) == 4 * 3  # 4 experiments x 3 rounds; no duplicates
  for a, b in zip(single, multi):
    assert (a["experiment"], a["round"]) == (b["experiment"], b["round"])
    for k in ("test_accuracy", "global_train_loss", "dissimilarity"):
      assert abs(a[k] - b[k]) < 1e-4, (k, a, b)
