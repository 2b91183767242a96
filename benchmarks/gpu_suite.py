"""The GPU check: one command, under 8 minutes on one GPU, a JSON file and a Markdown table.

  python benchmarks/gpu_suite.py [--out=DIR] [--data_source=idx --data_dir=../shared/data/mnist]
  python benchmarks/gpu_suite.py --smoke     # CPU, toy sizes: what the test suite runs

Items (each in its own process, so each peak device memory is its own):
  default_run  the default `fedprox` CNN run, 100 rounds, evaluation every round: total wall
               time including compilation, and seconds per round after the first round
  round        one default round: looped vs 1 lane vs one lane per client vs the backend
               default, with conv_impl im2col and xla (the other convolutions: default path)
  figure1      the Figure-1 CNN grid (3 algorithms x 3 straggler levels x 5 seeds, 100
               rounds): a measured fraction (1 seed, --figure1_rounds rounds), the full grid's
               wall time extrapolated from it (stated as such), and the effect of
               experiments_per_program
  niid_bench   configs/niid_bench.py:grid in full (5 splits x 4 algorithms x 3 seeds, 50
               rounds): wall time and the table (the issue's target: under 2 minutes on one GPU)
Writes DIR/gpu_suite.json and DIR/gpu_suite.md (device, versions, the command, CPU model).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_IDX = os.path.join(ROOT, "..", "shared", "data", "mnist")
ITEMS = ("default_run", "round", "figure1", "niid_bench")
GRID_EXPERIMENTS, GRID_ROUNDS = 45, 100  # the full Figure-1 grid


def _args(argv):
  import argparse
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="", help="output directory (default: outputs/gpu_suite-DATE)")
  p.add_argument("--smoke", action="store_true", help="toy sizes, for CPU and the tests")
  p.add_argument("--data_source", default="", help="idx | tfds (default: idx from "
                 "../shared/data/mnist when it exists, else tfds)")
  p.add_argument("--data_dir", default="")
  p.add_argument("--items", default=",".join(ITEMS), help="comma-separated subset of " + ", ".join(ITEMS))
  p.add_argument("--round_repeats", type=int, default=5)
  p.add_argument("--figure1_rounds", type=int, default=10)
  p.add_argument("--item_timeout", type=int, default=300, help="seconds per item")
  p.add_argument("--item", default="", help=argparse.SUPPRESS)  # internal: run one item
  p.add_argument("--item_json", default="", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def _base_config(a, variant="fedprox"):
  from configs import mnist as mnist_config
  c = mnist_config.get_config(variant)
  source = a.data_source or ("idx" if os.path.isdir(SHARED_IDX) else "tfds")
  c.data_source = source
  c.data_dir = a.data_dir or (SHARED_IDX if source == "idx" else "")
  c.tensorboard = False
  if a.smoke:  # a few clients and examples, few rounds: exercises every path in seconds
    c.update(dict(train_subset=600, num_clients=10, clients_per_round=2, local_epochs=1,
                  num_rounds=2, checkpoint_every=100))
    if c.mode == "sweep":  # (a run refuses the sweep's fields)
      c.sweep.dissimilarity = False
    c.allow_modified_mnist = True  # the smoke test's generated digits
    c.autotune = False  # its paths are named; timing the CPU's candidates is not its job
  return c


def _resolved(c):
  from fedprox_jax.run import config as config_lib
  return config_lib.resolve(c)


def _device_peak_bytes():
  import jax
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def item_default_run(a, workdir):
  from fedprox_jax.run import single
  c = _base_config(a)
  start = time.perf_counter()
  summary = single.run(c, workdir)
  total = time.perf_counter() - start
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  after_first = (rows[-1]["wall_time"] - rows[0]["wall_time"]) / max(len(rows) - 1, 1)
  return {"rounds": c.num_rounds, "total_seconds": total,
          "seconds_per_round_after_first": after_first,
          "first_round_seconds": rows[0]["wall_time"],
          "final_test_accuracy": summary["final_test_accuracy"],
          "lanes": _read_json(os.path.join(workdir, "config.json"))["num_lanes"]}


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def item_round(a, workdir):
  import jax
  from fedprox_jax.data import mnist as data_lib
  from fedprox_jax.run import experiment
  from fedprox_jax.core import models, reference, rounds
  from fedprox_jax.run import defaults
  c = _resolved(_base_config(a))
  exp = experiment.prepare(c, data_lib.load_mnist(c.data_source, c.data_dir, False),
                           lanes_over_devices=False).data
  hp = experiment.hparams(c)
  k = c.clients_per_round
  spec_with = lambda lanes: experiment.round_spec(c, exp.stats["max_train"], num_lanes=lanes)
  keys = [jax.random.fold_in(jax.random.key(c.seed), t) for t in range(a.round_repeats + 1)]
  default_lanes = defaults.num_lanes(k)
  results = []
  # The smoke run (the tests', on CPU) times two: the loop is the same for every convolution.
  for conv in models.CONV_IMPLS[:2] if a.smoke else models.CONV_IMPLS:
    model = models.make_model(c.model, conv, mlr_init=c.mlr_init)
    params = models.init_params(model, jax.random.key(0))
    paths = (("looped", None), ("1 lane", 1), ("lane per client", k),
             (f"default ({default_lanes} lanes)", default_lanes))
    # Compiling every path for each convolution is most of a CPU smoke run; on a GPU the
    # newer candidates (patches, xla_nchw) are timed on the default path only.
    if (a.smoke and conv != models.CONV_IMPLS[0]) or conv not in ("im2col", "xla"):
      paths = paths[-1:]
    for path, lanes in paths:
      if lanes is None:
        spec = spec_with(1)
        run = lambda key, spec=spec, model=model, params=params: reference.looped_round(
            model.apply, spec, params, exp.train, hp, key)
      else:
        fn = rounds.make_round_fn(model.apply, spec_with(lanes))
        run = lambda key, fn=fn, params=params: fn(params, exp.train, hp, key)
      start = time.perf_counter()
      jax.block_until_ready(run(keys[0]))
      first = time.perf_counter() - start
      times = []
      for key in keys[1:]:
        start = time.perf_counter()
        jax.block_until_ready(run(key))
        times.append(time.perf_counter() - start)
      results.append({"conv_impl": conv, "path": path, "lanes": lanes,
                      "median_ms": 1e3 * statistics.median(times), "first_round_s": first})
  looped = {r["conv_impl"]: r["median_ms"] for r in results if r["path"] == "looped"}
  for r in results:
    r["speedup_vs_looped"] = looped.get(r["conv_impl"], float("nan")) / r["median_ms"]
  return {"clients_per_round": k, "repeats": a.round_repeats, "paths": results}


def item_figure1(a, workdir):
  from fedprox_jax.run import sweep
  rounds = 2 if a.smoke else a.figure1_rounds
  runs = []
  for per_program in ((1, 3) if a.smoke else (1, 9)):
    c = _base_config(a, "figure1")
    c.update(dict(num_rounds=rounds, eval_every=rounds))
    c.sweep.seeds = 1
    c.sweep.experiments_per_program = per_program
    if a.smoke:
      c.sweep.stragglers = "0.9"
    run_dir = os.path.join(workdir, f"epp{per_program}")
    start = time.perf_counter()
    results = sweep.run(c, run_dir)
    seconds = time.perf_counter() - start
    n = len(results)
    # Extrapolation (not a measurement): time scales with experiments x rounds.
    full = seconds * (GRID_EXPERIMENTS / n) * (GRID_ROUNDS / rounds)
    runs.append({"experiments_per_program": per_program, "experiments": n, "rounds": rounds,
                 "measured_seconds": seconds, "full_grid_seconds_extrapolated": full})
  return {"runs": runs, "full_grid": f"{GRID_EXPERIMENTS} experiments x {GRID_ROUNDS} rounds"}


def item_niid_bench(a, workdir):
  from configs import niid_bench
  from fedprox_jax.run import sweep
  c = niid_bench.get_config("grid")
  base = _base_config(a)
  c.update(dict(data_source=base.data_source, data_dir=base.data_dir, tensorboard=False,
                allow_modified_mnist=base.allow_modified_mnist))
  if a.smoke:
    c.update(dict(train_subset=600, num_rounds=2, local_epochs=1))
    c.sweep.update(dict(seeds=1, splits="labeldir0.5"))
  start = time.perf_counter()
  results = sweep.run(c, workdir)
  seconds = time.perf_counter() - start
  with open(os.path.join(workdir, "summary.md")) as f:
    table = f.read().split("\n\n")[0]
  return {"experiments": len(results), "rounds": c.num_rounds, "seconds": seconds,
          "table": table}


def _run_item(a):
  from fedprox_jax import cache
  cache.enable_compilation_cache()
  fn = {"default_run": item_default_run, "round": item_round, "figure1": item_figure1,
        "niid_bench": item_niid_bench}[a.item]
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    result = fn(a, os.path.join(workdir, "w"))
    result["item_seconds"] = time.perf_counter() - start
  result["peak_device_bytes"] = _device_peak_bytes()
  result["peak_host_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  with open(a.item_json, "w") as f:
    json.dump(result, f)


def _environment():
  import jax
  from fedprox_jax import outputs
  env = outputs.environment()
  return {"device_kind": jax.devices()[0].device_kind, "backend": jax.default_backend(),
          "device_count": jax.device_count(), "jax": jax.__version__,
          "packages": env["packages"], "cpu": outputs.cpu_model(), "python": env["python"],
          "date": time.strftime("%Y-%m-%d %H:%M")}


def _mb(b):
  return "n/a" if b is None else f"{b / 2**20:.0f} MiB"


def markdown(report) -> str:
  e = report["environment"]
  lines = [f"### GPU suite: {e['device_kind']} ({e['backend']}), {e['date']}", "",
           f"`{report['command']}` — jax {e['jax']}, flax {e['packages'].get('flax')}, "
           f"CPU {e['cpu']}{' — SMOKE (toy sizes, not a measurement)' if report['smoke'] else ''}", ""]
  for name, r in report["items"].items():
    if "error" in r:
      lines += [f"{name}: error: {r['error']}", ""]
      continue
    if name == "default_run":
      lines += ["| default `fedprox` CNN run | value |", "|---|---:|",
                f"| rounds | {r['rounds']} |",
                f"| total wall time (incl. compile, eval) | {r['total_seconds']:.1f} s |",
                f"| first round (compile) | {r['first_round_seconds']:.2f} s |",
                f"| s/round after the first | {r['seconds_per_round_after_first']:.3f} |",
                f"| final test accuracy | {r['final_test_accuracy']:.4f} |",
                f"| lanes | {r['lanes']} |", f"| peak device memory | {_mb(r['peak_device_bytes'])} |"]
    elif name == "round":
      lines += [f"One default round ({r['clients_per_round']} clients, median of {r['repeats']}; "
                f"peak device memory {_mb(r['peak_device_bytes'])}):", "",
                "| conv_impl | path | ms/round | vs looped | first round (s) |", "|---|---|---:|---:|---:|"]
      lines += [f"| {p['conv_impl']} | {p['path']} | {p['median_ms']:.1f} | "
                f"{p['speedup_vs_looped']:.2f}x | {p['first_round_s']:.1f} |" for p in r["paths"]]
    elif name == "figure1":
      lines += [f"Figure-1 CNN grid (measured fraction; full grid = {r['full_grid']}, "
                f"**extrapolated** linearly; peak device memory {_mb(r['peak_device_bytes'])}):", "",
                "| experiments_per_program | measured | measured s | full grid s (extrapolated) |",
                "|---:|---|---:|---:|"]
      lines += [f"| {x['experiments_per_program']} | {x['experiments']} exp x {x['rounds']} rounds | "
                f"{x['measured_seconds']:.1f} | {x['full_grid_seconds_extrapolated']:.0f} |"
                for x in r["runs"]]
    elif name == "niid_bench":
      lines += [f"NIID-Bench MNIST grid (configs/niid_bench.py:grid): {r['experiments']} "
                f"experiments x {r['rounds']} rounds in {r['seconds']:.1f} s (measured, whole "
                f"sweep incl. compilation; peak device memory {_mb(r['peak_device_bytes'])}):",
                "", r["table"]]
    lines.append("")
  return "\n".join(lines) + "\n"


def main(argv=None):
  a = _args(argv if argv is not None else sys.argv[1:])
  if a.item:
    _run_item(a)
    return 0
  out = a.out or os.path.join("outputs", f"gpu_suite-{time.strftime('%Y%m%d-%H%M%S')}")
  os.makedirs(out, exist_ok=True)
  items = [i for i in a.items.split(",") if i]
  unknown = sorted(set(items) - set(ITEMS))
  if unknown:
    print(f"error: unknown item(s) {unknown}: use some of {', '.join(ITEMS)}", file=sys.stderr)
    return 2
  report = {"command": "python benchmarks/gpu_suite.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "smoke": a.smoke, "items": {}}
  passthrough = [f"--round_repeats={1 if a.smoke else a.round_repeats}",
                 f"--figure1_rounds={a.figure1_rounds}", f"--data_source={a.data_source}",
                 f"--data_dir={a.data_dir}"] + (["--smoke"] if a.smoke else [])
  for item in items:
    item_json = os.path.join(out, f"{item}.json")
    start = time.perf_counter()
    try:
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--item={item}",
                             f"--item_json={item_json}"] + passthrough, cwd=ROOT,
                            capture_output=True, text=True, timeout=a.item_timeout)
      if proc.returncode == 0:
        with open(item_json) as f:
          report["items"][item] = json.load(f)
      else:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no message"]
        report["items"][item] = {"error": f"exit {proc.returncode}: {tail[0]}"}
        with open(os.path.join(out, f"{item}.log"), "w") as f:
          f.write(proc.stderr)
    except subprocess.TimeoutExpired:
      report["items"][item] = {"error": f"timed out after {a.item_timeout} s"}
    print(f"{item}: {time.perf_counter() - start:.1f} s"
          + (f"  ERROR {report['items'][item]['error']}" if "error" in report["items"][item] else ""),
          flush=True)
  report["environment"] = _environment()
  with open(os.path.join(out, "gpu_suite.json"), "w") as f:
    json.dump(report, f, indent=2)
  table = markdown(report)
  with open(os.path.join(out, "gpu_suite.md"), "w") as f:
    f.write(table)
  print(table)
  return 1 if any("error" in r for r in report["items"].values()) else 0


if __name__ == "__main__":
  sys.exit(main())
