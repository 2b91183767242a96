"""docs/examples/fedexp.py, an algorithm registered from outside the package: its vmapped round
equals its looped reference, it runs from the command line (the file is the config) with its
own hyper-parameter, and a bad value or a hyper-parameter of an algorithm not run is one line.

In subprocesses: registering it in this process would add an entry to the registry the other
tests enumerate.
"""

import json
import os
import subprocess
import sys

from helpers import write_idx_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "docs", "examples", "fedexp.py")

ORACLE = r"""
import importlib.util, sys
import jax, numpy as np
sys.path[:0] = [ROOT, ROOT + "/tests"]
spec = importlib.util.spec_from_file_location("fedexp_example", EXAMPLE)
example = importlib.util.module_from_spec(spec); spec.loader.exec_module(example)
from fedprox_jax.core import algorithms, models, reference, rounds
from helpers import HETERO_SIZES, make_federated_data, tree_max_abs_diff
a = algorithms.get("fedexp")
spec = rounds.RoundSpec(clients_per_round=4, local_epochs=3, batch_size=4,
                        max_client_size=max(HETERO_SIZES), num_lanes=2, sampling="uniform",
                        straggler_rule="exact", weighting="samples",
                        **algorithms.round_statics(a, 0.0))
hp = rounds.HParams.create(0.05, 0.0, 0.5, False, 4, algorithm=a.hparams)
data = make_federated_data(HETERO_SIZES, seed=3)
model = models.LogisticRegression()
x0 = models.init_params(model, jax.random.key(0))
avg_spec = rounds.RoundSpec(**{**spec.__dict__, "hooks": algorithms.FEDAVG.hooks})
step = jax.jit(rounds.round_step, static_argnums=(0, 1))
v, l, avg = (rounds.ServerState(x0),) * 3
for t in (1, 2):
  v, _ = step(model.apply, spec, v, data, hp, jax.random.key(t))
  l, _ = reference.looped_round_step(model.apply, spec, l, data, hp, jax.random.key(t))
  avg, _ = step(model.apply, avg_spec, avg, data, hp, jax.random.key(t))
print(tree_max_abs_diff(v.params, l.params), tree_max_abs_diff(v.params, avg.params))
"""


def _python(code):
  return subprocess.run([sys.executable, "-c", f"ROOT, EXAMPLE = {ROOT!r}, {EXAMPLE!r}\n" + code],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_registered_algorithm_from_outside_equals_its_looped_reference():
  result = _python(ORACLE)
  assert result.returncode == 0, result.stderr[-3000:]
  to_looped, to_fedavg = map(float, result.stdout.split()[-2:])
  assert to_looped < 3e-5
  assert to_fedavg > 1e-4  # it extrapolated: not FedAvg's average


def _launch(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def test_a_registered_algorithm_runs_from_the_command_line(tmp_path):
  write_idx_dir(tmp_path / "idx", num_train=2000, num_test=300)
  common = ["--config.data_source=idx", f"--config.data_dir={tmp_path / 'idx'}",
            "--config.allow_modified_mnist=True", "--config.model=mlr",
            "--config.num_clients=20", "--config.clients_per_round=5", "--config.num_rounds=2",
            "--config.local_epochs=2"]
  workdir = tmp_path / "run"
  result = _launch(f"--config={EXAMPLE}", *common, "--config.hparams.fedexp.epsilon=0.01",
                   f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["algorithm"] == "fedexp"
  assert config["hparams"] == {"fedexp": {"epsilon": 0.01}}  # only what ran is recorded
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in rows] == [1, 2] and rows[-1]["test_accuracy"] > 0.1

  bad = _launch(f"--config={EXAMPLE}", *common, "--config.hparams.fedexp.epsilon=0.0",
                f"--workdir={tmp_path / 'bad'}")
  assert bad.returncode != 0
  assert "config.hparams.fedexp.epsilon=0.0: must be > 0" in bad.stderr
  assert "Traceback" not in bad.stderr
  # FedDyn's alpha on a run of FedExP would be ignored: refused, naming what to do.
  other = _launch(f"--config={EXAMPLE}", *common, "--config.hparams.feddyn.alpha=0.1",
                  f"--workdir={tmp_path / 'other'}")
  assert other.returncode != 0
  assert ("config.hparams.feddyn.alpha=0.1 applies to the algorithm feddyn, which this run "
          "does not run: add --config.algorithm=feddyn") in other.stderr
  assert not (tmp_path / "bad").exists() and not (tmp_path / "other").exists()


def _own_data(path, num_clients=12, per_client=(5, 40), seed=0):
  """Three Gaussian blobs in 2-D, each client a few examples of them under its own (sparse,
  unordered) id, and a test set: arrays in docs/examples/own_data.py's layout."""
  import numpy as np
  rng = np.random.default_rng(seed)
  centers = np.array([[0.0, 4.0], [4.0, -2.0], [-4.0, -2.0]])
  ids = rng.permutation(1000)[:num_clients]
  xs, ys, cids = [], [], []
  for cid in ids:
    n = int(rng.integers(*per_client))
    y = rng.integers(0, 3, n)
    xs.append(centers[y] + rng.normal(size=(n, 2)))
    ys.append(y)
    cids.append(np.full(n, cid))
  test_y = rng.integers(0, 3, 300)
  arrays = dict(x=np.concatenate(xs), y=np.concatenate(ys), client_id=np.concatenate(cids),
                test_x=centers[test_y] + rng.normal(size=(300, 2)), test_y=test_y,
                num_classes=3)
  np.savez(path, **arrays)
  return arrays


def test_from_client_ids_keeps_each_clients_examples_in_order():
  import numpy as np
  import pytest
  from fedprox_jax.data import federation
  from fedprox_jax.errors import DataError
  x = np.arange(7, dtype=np.float32)[:, None]
  y = np.array([0, 1, 2, 0, 1, 2, 0])
  ids = np.array([30, 5, 30, 7, 5, 30, 7])
  fed = federation.from_client_ids(x, y, ids, x[:2], y[:2], num_classes=3)
  # clients by sorted id: 5 -> examples 1, 4; 7 -> 3, 6; 30 -> 0, 2, 5
  assert np.asarray(fed.train.x)[:, 0].tolist() == [1, 4, 3, 6, 0, 2, 5]
  assert fed.train.sizes.tolist() == [2, 2, 3] and fed.train.offsets.tolist() == [0, 2, 4]
  assert fed.num_classes == 3 and fed.stats["clients"] == 3 and fed.stats["max_train"] == 3
  assert fed.train.x.dtype == np.float32 and fed.train.y.dtype == np.int32
  for bad, match in (
      (dict(y=np.array([0, 1, 3, 0, 1, 2, 0])), "labels must be integers from 0 to 2"),
      (dict(client_id=ids[:6]), "6 client ids for 7 training examples"),
      (dict(test_x=np.zeros((2, 3))), r"shape \(1,\) and test examples of shape \(3,\)")):
    args = {**dict(x=x, y=y, client_id=ids, test_x=x[:2], test_y=y[:2]), **bad}
    with pytest.raises(DataError, match=match) as e:
      federation.from_client_ids(args["x"], args["y"], args["client_id"], args["test_x"],
                                 args["test_y"], num_classes=3)
    assert "\n" not in str(e.value)
  # Arrays without clients: split by the config's partition, as MNIST is.
  from configs import mnist as mnist_config
  c = mnist_config.get_config("fedprox")
  c.update(dict(partition="iid", num_clients=2, partition_seed=1))
  fed = federation.from_arrays(c, x, y, x[:2], y[:2], num_classes=3)
  assert sorted(np.asarray(fed.train.x)[:, 0].tolist()) == list(range(7))
  assert len(fed.train.sizes) == 2 and fed.stats["examples"] == 7


def test_a_data_set_of_your_own_runs_from_the_command_line(tmp_path):
  import numpy as np
  arrays = _own_data(tmp_path / "mine.npz")
  example = os.path.join(ROOT, "docs", "examples", "own_data.py")
  common = [f"--config={example}", f"--config.data_dir={tmp_path / 'mine.npz'}",
            "--config.clients_per_round=4", "--config.num_rounds=3", "--config.lr=0.1",
            "--config.mu=0.0"]
  wrong = _launch(*common, "--config.num_clients=10", f"--workdir={tmp_path / 'wrong'}")
  assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
  assert ("config.num_clients=10: data set 'own_npz' has 12 clients: set "
          "--config.num_clients=12") in wrong.stderr
  split = _launch(*common, "--config.num_clients=12", "--config.partition=iid",
                  f"--workdir={tmp_path / 'split'}")
  assert split.returncode != 0 and "Traceback" not in split.stderr
  assert "name each example's client: config.partition='iid' does not apply" in split.stderr
  workdir = tmp_path / "run"
  result = _launch(*common, "--config.num_clients=12", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["data"] == "own_npz" and config["genuine_mnist"] is None
  stats = json.loads((workdir / "partition_stats.json").read_text())
  assert stats["clients"] == 12 and stats["examples"] == len(arrays["y"])
  assert stats["test_examples"] == 300
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["round"] == 3 and rows[-1]["test_accuracy"] > 0.8  # the blobs are separable
  assert np.isfinite(rows[-1]["test_loss"])


def test_a_model_of_your_own_runs_from_the_command_line(tmp_path):
  write_idx_dir(tmp_path / "idx", num_train=2000, num_test=300)
  example = os.path.join(ROOT, "docs", "examples", "mlp_model.py")
  workdir = tmp_path / "run"
  result = _launch(f"--config={example}", "--config.data_source=idx",
                   f"--config.data_dir={tmp_path / 'idx'}", "--config.allow_modified_mnist=True",
                   "--config.num_clients=20", "--config.clients_per_round=5",
                   "--config.num_rounds=2", "--config.local_epochs=1", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"] == "mlp" and config["eval_batch_size"] == 300  # capped to the test set
  assert config["conv_impl"] == "none"  # not convolutional: nothing to choose or time
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in rows] == [1, 2]
  # Its parameters are the perceptron's: 784 x 200 + 200 + 200 x 10 + 10.
  check = subprocess.run(
      [sys.executable, "-c", f"""
import importlib.util, sys
sys.path.insert(0, {ROOT!r})
spec = importlib.util.spec_from_file_location("mlp_example", {example!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
import jax
from fedprox_jax.core import models
params = models.init_params(models.make_model("mlp", num_classes=10), jax.random.key(0))
print(sum(x.size for x in jax.tree_util.tree_leaves(params)))
"""], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert check.returncode == 0, check.stderr[-2000:]
  assert int(check.stdout.split()[-1]) == 784 * 200 + 200 + 200 * 10 + 10


def _token_data(path, num_clients=12, vocab_size=30, length=12, seed=0):
  """Three classes of token sequences (each class draws 70 % of its tokens from its own ten
  of the 30), each client a few under its own id, and a test set: own_data.py's layout with
  ``vocab_size``."""
  import numpy as np
  rng = np.random.default_rng(seed)

  def sequences(labels):
    own = 10 * labels[:, None] + rng.integers(0, 10, (len(labels), length))
    anywhere = rng.integers(0, vocab_size, (len(labels), length))
    return np.where(rng.random((len(labels), length)) < 0.7, own, anywhere).astype(np.int64)

  sizes = rng.integers(5, 40, num_clients)
  y = rng.integers(0, 3, int(sizes.sum()))
  test_y = rng.integers(0, 3, 300)
  arrays = dict(x=sequences(y), y=y, client_id=np.repeat(rng.permutation(500)[:num_clients], sizes),
                test_x=sequences(test_y), test_y=test_y, num_classes=3, vocab_size=vocab_size)
  np.savez(path, **arrays)
  return arrays


TOKEN_ORACLE = r"""
import importlib.util, sys
import jax, numpy as np
sys.path[:0] = [ROOT, ROOT + "/tests"]
spec = importlib.util.spec_from_file_location("token_example", EXAMPLE)
example = importlib.util.module_from_spec(spec); spec.loader.exec_module(example)
from fedprox_jax.core import algorithms, models, reference, rounds
from fedprox_jax.data import federation
from helpers import tree_max_abs_diff
rng = np.random.default_rng(1)
sizes = np.array([3, 17, 9, 30, 5, 12])
x = rng.integers(0, 30, (int(sizes.sum()), 12))
fed = federation.from_client_ids(x, rng.integers(0, 3, len(x)), np.repeat(np.arange(6), sizes),
                                 x[:4], np.zeros(4, int), num_classes=3, vocab_size=30)
assert fed.train.x.dtype == np.int32 and fed.input_spec == ((12,), "int32", 30), fed.input_spec
data = jax.tree_util.tree_map(jax.numpy.asarray, fed.train)
model = models.make_model("bag_of_tokens", num_classes=3, input_spec=fed.input_spec)
x0 = models.init_params(model, jax.random.key(0), fed.input_spec)
for name in ("fedprox", "scaffold"):
  a = algorithms.get(name)
  spec = rounds.RoundSpec(clients_per_round=4, local_epochs=2, batch_size=4, max_client_size=30,
                          num_lanes=2, sampling="uniform", straggler_rule="exact",
                          weighting="samples", **algorithms.round_statics(a, 0.0))
  hp = rounds.HParams.create(0.1, 0.5, 0.5, False, 4, algorithm=a.hparams)
  state = rounds.init_server_state(spec, x0, 6, hp)
  v = l = state
  for t in (1, 2):
    v, _ = jax.jit(rounds.round_step, static_argnums=(0, 1))(model.apply, spec, v, fed.train, hp, jax.random.key(t))
    l, _ = reference.looped_round_step(model.apply, spec, l, fed.train, hp, jax.random.key(t))
  print(name, tree_max_abs_diff(v.params, l.params), tree_max_abs_diff(v.params, x0))
"""


def test_a_token_model_equals_its_looped_reference_on_token_ids():
  example = os.path.join(ROOT, "docs", "examples", "token_model.py")
  result = subprocess.run([sys.executable, "-c", f"ROOT, EXAMPLE = {ROOT!r}, {example!r}\n"
                           + TOKEN_ORACLE], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line.split() for line in result.stdout.splitlines()]
  assert [line[0] for line in lines] == ["fedprox", "scaffold"]
  for _, to_looped, moved in lines:
    assert float(to_looped) < 3e-5
    assert float(moved) > 1e-3  # it trained: the embeddings and the dense layer moved


def test_token_ids_are_kept_and_checked():
  import numpy as np
  import pytest
  from fedprox_jax.data import federation
  from fedprox_jax.errors import DataError
  x = np.array([[0, 3, 4], [5, 1, 1], [2, 2, 0]], np.uint8)
  y = np.array([0, 1, 0])
  fed = federation.from_client_ids(x, y, [1, 1, 2], x, y, num_classes=2, vocab_size=6)
  assert fed.train.x.dtype == np.int32 and np.asarray(fed.train.x).tolist() == x.tolist()
  assert fed.vocab_size == 6 and fed.input_spec.tokens
  # Without vocab_size, integers are features (pixel values), as before: float32.
  features = federation.from_client_ids(x, y, [1, 1, 2], x, y, num_classes=2)
  assert features.train.x.dtype == np.float32 and not features.input_spec.tokens
  for bad_x, bad_test in ((np.where(x == 5, 6, x), x), (x, x.astype(np.float32))):
    with pytest.raises(DataError, match=r"inputs must be token ids, integers from 0 to 5 "
                                        r"\(vocab_size=6\)") as e:
      federation.from_client_ids(bad_x, y, [1, 1, 2], bad_test, y, num_classes=2, vocab_size=6)
    assert "\n" not in str(e.value)


def test_a_token_model_runs_from_the_command_line_and_refuses_features(tmp_path):
  arrays = _token_data(tmp_path / "tokens.npz")
  _own_data(tmp_path / "blobs.npz")
  example = os.path.join(ROOT, "docs", "examples", "token_model.py")
  common = [f"--config={example}", "--config.num_clients=12", "--config.clients_per_round=4",
            "--config.num_rounds=3", "--config.lr=0.5", "--config.mu=0.0"]
  workdir = tmp_path / "run"
  result = _launch(*common, f"--config.data_dir={tmp_path / 'tokens.npz'}", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"] == "bag_of_tokens" and config["data"] == "own_npz"
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in rows] == [1, 2, 3] and rows[-1]["test_accuracy"] > 0.8
  assert len(arrays["test_y"]) == 300
  # A model of features on token ids, and the token model on features: one line each.
  for data, model, says in (
      ("tokens.npz", "mlr", "takes features, and the data set's inputs are token ids (vocab_size=30)"),
      ("blobs.npz", "bag_of_tokens", "takes token ids, and the data set's inputs are float32 features")):
    bad = _launch(*common, f"--config.data_dir={tmp_path / data}", f"--config.model={model}",
                  f"--workdir={tmp_path / model}")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    assert f"config.model={model!r}: {says} (data set 'own_npz'): choose another model" in bad.stderr
    assert not (tmp_path / model).exists()
