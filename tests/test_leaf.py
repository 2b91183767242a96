"""The LEAF federations (FEMNIST, Shakespeare) on small folders written in LEAF's exact layout,
quirks included; each bad file one line; the paper's stacked LSTM against a step-by-step loop
and flax's LSTMCell; its vmapped round against the looped reference; the configs end to end,
a Shakespeare run stopped and resumed."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedprox_jax.core import algorithms, reference, rounds, stacked_lstm
from fedprox_jax.data import femnist, leaf, sent140, shakespeare
from fedprox_jax.errors import DataError
from helpers import ROOT, read_rows, start_launch, tree_max_abs_diff, wait_for_lines


def _write(path, users, user_data, hierarchies=None, num_samples=None):
  content = {"users": users, "num_samples": num_samples or [len(user_data[u]["y"]) for u in users],
             "user_data": user_data}
  if hierarchies is not None:
    content["hierarchies"] = hierarchies
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(content, f)


def _femnist_folder(root, seed=0, writers=6):
  """Writers f0000_00 .. in two train files; the quirks of real files: an unlisted user with an
  empty entry, labels written as floats, a hierarchies list of the wrong length, a test-only
  user. Each writer holds 3 of the classes, its pixels shifted by its label (learnable)."""
  rng = np.random.default_rng(seed)

  def examples(labels):
    base = rng.random((len(labels), 784)) * 0.2
    base[np.arange(len(labels))[:, None], (labels[:, None] * 30 + np.arange(30))] = 1.0
    return base.round(4).tolist()

  names = [f"f{i:04d}_{i % 3:02d}" for i in range(writers)]
  train, test = {}, {}
  for name in names:
    classes = rng.choice(10, 3, replace=False)
    y, ty = rng.choice(classes, int(rng.integers(8, 30))), rng.choice(classes, 4)
    train[name] = {"x": examples(y), "y": [float(v) for v in y]}  # floats, as some files hold
    test[name] = {"x": examples(ty), "y": ty.tolist()}
  half = writers // 2
  # The second file lists its users in another order; an unlisted user keeps an empty entry.
  _write(root / "train" / "all_data_0_niid_0_keep_0_train_9.json", names[:half],
         {n: train[n] for n in names[:half]}, hierarchies=["a"] * (half + 1))
  _write(root / "train" / "all_data_1_niid_0_keep_0_train_9.json", names[half:][::-1],
         {**{n: train[n] for n in names[half:]}, "f9999_00": {"x": [], "y": []}})
  test["f8888_00"] = {"x": examples(np.array([1])), "y": [1]}  # a test-only user
  _write(root / "test" / "all_data_0_niid_0_keep_0_test_9.json", sorted(test), test)
  return names, train, test


def test_a_femnist_folder_with_the_quirks_of_real_files_reads_as_the_authors_read_it(tmp_path):
  names, train, test = _femnist_folder(tmp_path)
  fed = leaf.read(str(tmp_path), femnist.encode, femnist.NUM_CLASSES)
  # The clients: the users with training examples, sorted (the authors' read_data).
  sizes = [len(train[n]["y"]) for n in sorted(names)]
  assert fed.train.sizes.tolist() == sizes and fed.stats["clients"] == len(names)
  first = sorted(names)[0]
  np.testing.assert_array_equal(fed.train.x[:sizes[0]].reshape(sizes[0], -1),
                                np.asarray(train[first]["x"], np.float32))
  assert fed.train.y[:sizes[0]].tolist() == [int(v) for v in train[first]["y"]]
  assert fed.train.x.shape[1:] == (28, 28, 1) and fed.train.x.dtype == np.float32
  # The pooled test set: each client's test examples in the clients' order, no test-only user.
  assert fed.test_y.tolist() == sum((test[n]["y"] for n in sorted(names)), [])
  assert fed.stats["leaf"] == {
      "files": fed.stats["leaf"]["files"], "test_only_users": 1, "unlisted_users_dropped": 1,
      "unlisted_users_kept": 0, "hierarchies_mismatched": 1}
  assert [f["name"] for f in fed.stats["leaf"]["files"]] == [
      "train/all_data_0_niid_0_keep_0_train_9.json", "train/all_data_1_niid_0_keep_0_train_9.json",
      "test/all_data_0_niid_0_keep_0_test_9.json"]
  assert fed.stats["labels_per_client_max"] <= 3
  again = leaf.read(str(tmp_path), femnist.encode, femnist.NUM_CLASSES)
  assert again.stats["data_sha256"] == fed.stats["data_sha256"]


def _shakespeare_folder(root, roles=5, seed=0, length=80):
  """Roles that speak lines of their own: each role's text is a repeated phrase, so the next
  character is learnable."""
  rng = np.random.default_rng(seed)
  letters = shakespeare.ALL_LETTERS
  train, test = {}, {}
  for r in range(roles):
    phrase = "".join(rng.choice(list(letters[14:]), 7)) + " "
    text = phrase * (length // len(phrase) + 40)
    starts = rng.integers(0, len(text) - length - 1, int(rng.integers(6, 16)) + 4)
    xs = [text[s:s + length] for s in starts]
    ys = [text[s + length] for s in starts]
    name = f"THE_PLAY_ROLE{r}"
    train[name] = {"x": xs[4:], "y": ys[4:]}
    test[name] = {"x": xs[:4], "y": ys[:4]}
  _write(root / "train" / "all_data_niid_0_keep_0_train_9.json", sorted(train), train)
  _write(root / "test" / "all_data_niid_0_keep_0_test_9.json", sorted(test), test)
  return train, test


def test_shakespeare_characters_are_ids_over_leafs_alphabet(tmp_path):
  train, _ = _shakespeare_folder(tmp_path)
  fed = leaf.read(str(tmp_path), shakespeare.encode, shakespeare.NUM_LETTERS,
                  vocab_size=shakespeare.NUM_LETTERS)
  first = sorted(train)[0]
  assert shakespeare.NUM_LETTERS == 80 and fed.input_spec == ((80,), "int32", 80)
  assert fed.train.x[0].tolist() == [shakespeare.ALL_LETTERS.find(ch) for ch in train[first]["x"][0]]
  assert fed.train.y[0] == shakespeare.ALL_LETTERS.find(train[first]["y"][0])


def _damage(root, kind):
  """A femnist folder with one fault of real-world files."""
  _femnist_folder(root)
  path = root / "train" / "all_data_0_niid_0_keep_0_train_9.json"
  content = json.loads(path.read_text())
  first = content["users"][0]
  if kind == "truncated":
    path.write_text(path.read_text()[:1000])
  elif kind == "num_samples":
    content["num_samples"][0] += 1
  elif kind == "label":
    content["user_data"][first]["y"][0] = 26.0
  elif kind == "fractional_label":
    content["user_data"][first]["y"][0] = 2.5
  elif kind == "empty_user":
    content["user_data"][first] = {"x": [], "y": []}
    content["num_samples"][0] = 0
  elif kind == "not_utf8":
    path.write_bytes(path.read_bytes().replace(b'"users"', b'"us\xff\xfers"', 1))
  elif kind == "twice":
    other = root / "train" / "all_data_1_niid_0_keep_0_train_9.json"
    two = json.loads(other.read_text())
    two["users"].append(first)
    two["num_samples"].append(content["num_samples"][0])
    two["user_data"][first] = content["user_data"][first]
    other.write_text(json.dumps(two))
  elif kind == "pixels":
    content["user_data"][first]["x"][0] = content["user_data"][first]["x"][0][:700]
  if kind in ("num_samples", "label", "fractional_label", "empty_user", "pixels"):
    path.write_text(json.dumps(content))
  return first


@pytest.mark.parametrize("kind, says", [
    ("truncated", r"all_data_0_niid_0_keep_0_train_9.json is not readable JSON"),
    ("num_samples", r"user 'f0000_00' has \d+ examples, and num_samples says \d+"),
    ("label", r"user 'f0000_00': label 26 is outside the data set's 26 classes"),
    ("fractional_label", r"user 'f0000_00': labels must be whole numbers"),
    ("empty_user", r"user 'f0000_00' of .*/train has no training examples"),
    ("not_utf8", r"all_data_0_niid_0_keep_0_train_9.json is not UTF-8 text"),
    ("twice", r"user 'f0000_00' is in both .*_train_9.json and .*_train_9.json"),
    ("pixels", r"user 'f0000_00': each example must be a list of 784 pixel values"),
])
def test_a_bad_leaf_file_is_one_line_naming_it(tmp_path, kind, says):
  _damage(tmp_path, kind)
  with pytest.raises(DataError, match=says) as e:
    leaf.read(str(tmp_path), femnist.encode, femnist.NUM_CLASSES)
  assert "\n" not in str(e.value)


def test_bad_shakespeare_text_is_one_line(tmp_path):
  train, _ = _shakespeare_folder(tmp_path)
  path = tmp_path / "train" / "all_data_niid_0_keep_0_train_9.json"
  content = json.loads(path.read_text())
  role = content["users"][0]
  for change, says in ((lambda x: "é" + x[1:], r"the character 'é' is not in LEAF's 80-letter"),
                       (lambda x: x[:79], r"every example must be 80 characters \(one has 79\)")):
    bad = json.loads(json.dumps(content))
    bad["user_data"][role]["x"][0] = change(bad["user_data"][role]["x"][0])
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=says) as e:
      leaf.read(str(tmp_path), shakespeare.encode, 80, vocab_size=80)
    assert "\n" not in str(e.value)


# --- the stacked LSTM ---------------------------------------------------------------------------

def _looped_lstm(params, tokens, hidden, layers, forget_bias):
  """The authors' model step by step in plain jax.numpy: TF1's BasicLSTMCell (gates i, j, f, o
  of one kernel on [x, h]) over the time steps, layer after layer, then the dense layer on the
  last output."""
  p = params["params"]
  x = _looped_layers(p, p["Embed_0"]["embedding"][tokens], hidden, layers, forget_bias)
  return x[:, -1] @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]


def _looped_layers(p, x, hidden, layers, forget_bias):
  for layer in range(layers):
    kernel, bias = p[f"lstm_{layer}"]["gates"]["kernel"], p[f"lstm_{layer}"]["gates"]["bias"]
    c = h = jnp.zeros((x.shape[0], hidden))
    outputs = []
    for t in range(x.shape[1]):
      i, j, f, o = jnp.split(jnp.concatenate([x[:, t], h], -1) @ kernel + bias, 4, -1)
      c = c * jax.nn.sigmoid(f + forget_bias) + jax.nn.sigmoid(i) * jnp.tanh(j)
      h = jnp.tanh(c) * jax.nn.sigmoid(o)
      outputs.append(h)
    x = jnp.stack(outputs, 1)
  return x


def test_the_stacked_lstm_equals_a_step_by_step_loop_and_flax_lstm_cell():
  model = stacked_lstm.StackedLSTM(vocab_size=80, num_classes=80, hidden=16)
  tokens = jax.random.randint(jax.random.key(1), (3, 12), 0, 80)
  params = model.init(jax.random.key(0), tokens)
  shapes = jax.tree_util.tree_map(jnp.shape, params)["params"]
  assert shapes["Embed_0"]["embedding"] == (80, 8)
  assert shapes["lstm_0"]["gates"]["kernel"] == (8 + 16, 64)
  assert shapes["lstm_1"]["gates"]["kernel"] == (16 + 16, 64)
  np.testing.assert_allclose(model.apply(params, tokens),
                             _looped_lstm(params, tokens, 16, 2, 1.0), rtol=1e-5, atol=1e-6)
  y = jnp.array([3, 7, 1])
  loss = lambda f: lambda p: jnp.mean(-jax.nn.log_softmax(f(p))[jnp.arange(3), y])
  grads = jax.grad(loss(lambda p: model.apply(p, tokens)))(params)
  looped = jax.grad(loss(lambda p: _looped_lstm(p, tokens, 16, 2, 1.0)))(params)
  assert tree_max_abs_diff(grads, looped) < 1e-5
  # Without TF's forget bias the cell is flax's LSTMCell (its i, f, g, o of separate kernels).
  import flax.linen as nn
  cell = stacked_lstm.LSTMCell(16, forget_bias=0.0)
  x, carry = jax.random.normal(jax.random.key(2), (3, 5)), (jnp.ones((3, 16)) * 0.3,) * 2
  ours = cell.init(jax.random.key(3), carry, x)
  kernel, bias = ours["params"]["gates"]["kernel"], ours["params"]["gates"]["bias"]
  block = lambda a, k: a[..., k * 16:(k + 1) * 16]
  theirs = {"params": {}}
  for name, k in (("i", 0), ("g", 1), ("f", 2), ("o", 3)):  # TF's order i, j (= g), f, o
    theirs["params"][f"i{name}"] = {"kernel": block(kernel[:5], k)}
    theirs["params"][f"h{name}"] = {"kernel": block(kernel[5:], k), "bias": block(bias, k)}
  (c, h), _ = cell.apply(ours, carry, x)
  (fc, fh), _ = nn.LSTMCell(16).apply(theirs, carry, x)
  np.testing.assert_allclose(c, fc, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(h, fh, rtol=1e-5, atol=1e-6)


def test_a_stacked_lstm_round_equals_its_looped_reference(tmp_path):
  _shakespeare_folder(tmp_path, roles=6, length=10)
  with pytest.raises(DataError, match="every example must be 80 characters"):
    leaf.read(str(tmp_path), shakespeare.encode, 80, vocab_size=80)
  # Short sequences for the oracle (the engine does not care about the length).
  sizes = np.array([3, 11, 7, 14, 5, 9])
  rng = np.random.default_rng(0)
  from fedprox_jax.data import federation
  x = rng.integers(0, 80, (int(sizes.sum()), 10))
  fed = federation.from_client_ids(x, rng.integers(0, 80, len(x)), np.repeat(np.arange(6), sizes),
                                   x[:4], np.zeros(4, int), num_classes=80, vocab_size=80)
  model = stacked_lstm.StackedLSTM(vocab_size=80, num_classes=80, hidden=16)
  x0 = model.init(jax.random.key(0), jnp.zeros((1, 10), jnp.int32))
  a = algorithms.get("fedprox")
  spec = rounds.RoundSpec(clients_per_round=4, local_epochs=2, batch_size=4, max_client_size=14,
                          num_lanes=2, sampling="uniform", straggler_rule="exact",
                          weighting="samples", **algorithms.round_statics(a, 0.0))
  hp = rounds.HParams.create(0.5, 0.01, 0.5, False, 4)
  data = jax.tree_util.tree_map(jnp.asarray, fed.train)
  v = looped = rounds.ServerState(x0)
  for t in (1, 2):
    v, _ = jax.jit(rounds.round_step, static_argnums=(0, 1))(model.apply, spec, v, data, hp,
                                                              jax.random.key(t))
    looped, _ = reference.looped_round_step(model.apply, spec, looped, data, hp, jax.random.key(t))
  assert tree_max_abs_diff(v.params, looped.params) < 3e-5
  assert tree_max_abs_diff(v.params, x0) > 1e-3


# --- the configs end to end ---------------------------------------------------------------------

def _launch(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=600)


def test_femnist_runs_from_its_config_and_refuses_what_does_not_apply(tmp_path):
  names, _, _ = _femnist_folder(tmp_path / "leaf", writers=8)
  common = ["--config=configs/leaf.py:femnist", f"--config.data_dir={tmp_path / 'leaf'}",
            "--config.num_clients=8", "--config.clients_per_round=4", "--config.num_rounds=3",
            "--config.local_epochs=2", "--config.lr=0.05"]
  workdir = tmp_path / "run"
  result = _launch(*common, f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert (config["data"], config["model"], config["protocol"], config["mu"]) == (
      "femnist", "mlr", "paper", 1.0)
  stats = json.loads((workdir / "partition_stats.json").read_text())
  assert stats["clients"] == 8 and stats["leaf"]["unlisted_users_dropped"] == 1
  rows = read_rows(workdir / "metrics.jsonl")
  assert [r["round"] for r in rows] == [1, 2, 3] and rows[-1]["test_accuracy"] > 0.5
  for extra, says in (
      (["--config.num_clients=200"], "data set 'femnist' has 8 clients: set --config.num_clients=8"),
      (["--config.partition=iid"], "config.partition='iid': does not apply to data='femnist'"),
      (["--config.protocol=seed"], "config.protocol='seed': data='femnist' follows the authors'"),
      (["--config.model=stacked_lstm"], "takes token ids, and the data set's inputs are float32")):
    bad = _launch(*common, *extra, f"--workdir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    assert says in bad.stderr.strip().splitlines()[-1]
  missing = _launch("--config=configs/leaf.py:femnist", f"--workdir={tmp_path / 'bad'}")
  assert "config.data_dir='': data='femnist' reads a LEAF folder" in missing.stderr
  assert not (tmp_path / "bad").exists()


def test_a_shakespeare_run_stopped_and_resumed_equals_an_uninterrupted_one(tmp_path):
  _shakespeare_folder(tmp_path / "leaf", roles=4)
  common = ["--config=configs/leaf.py:shakespeare", f"--config.data_dir={tmp_path / 'leaf'}",
            "--config.num_clients=4", "--config.clients_per_round=2", "--config.num_rounds=12",
            "--config.local_epochs=1", "--config.checkpoint_every=1", "--config.tensorboard=False"]
  whole = tmp_path / "whole"
  result = _launch(*common, f"--workdir={whole}")
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((whole / "config.json").read_text())
  assert (config["model"], config["mu"], config["lr"]) == ("stacked_lstm", 0.001, 0.8)
  stopped = tmp_path / "stopped"
  proc = start_launch([*common, f"--workdir={stopped}"])
  wait_for_lines(proc, stopped / "metrics.jsonl", 1)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err[-3000:]
  assert len(read_rows(stopped / "metrics.jsonl")) < 12
  again = _launch(*common, f"--workdir={stopped}")
  assert again.returncode == 0, again.stderr[-3000:]
  assert read_rows(stopped / "metrics.jsonl") == read_rows(whole / "metrics.jsonl")
  assert len(read_rows(whole / "metrics.jsonl")) == 12


# --- Sent140 ------------------------------------------------------------------------------------

WORDS = ["good", "great", "love", "bad", "awful", "hate", "the", "day", "is", "was", ".", "!"]


def _sent140_folder(root, users=6, seed=0):
  """Tweets in LEAF's record layout (the text at index 4), '4' for the positive ones (which use
  the positive words), some longer than 25 words, some with words no embedding holds; and a
  GloVe-style .txt of 300-d vectors (without 'zzunknown') plus the same as LEAF's embs.json."""
  rng = np.random.default_rng(seed)
  train, test = {}, {}
  for u in range(users):
    records, labels = [], []
    for _ in range(int(rng.integers(8, 20))):
      positive = bool(rng.integers(0, 2))
      words = list(rng.choice(WORDS[:3] if positive else WORDS[3:6], 3)) + list(
          rng.choice(WORDS[6:], int(rng.integers(1, 30)))) + ["zzunknown"]
      records.append(["1467810369", "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", f"user{u}",
                      " ".join(rng.permutation(words))])
      labels.append("4" if positive else "0")
    name = f"user{u:03d}"
    train[name], test[name] = {"x": records[3:], "y": labels[3:]}, {"x": records[:3], "y": labels[:3]}
  _write(root / "train" / "all_data_niid_03_keep_30_train_8.json", sorted(train), train)
  _write(root / "test" / "all_data_niid_03_keep_30_test_8.json", sorted(test), test)
  vectors = {w: rng.normal(size=300).round(5) for w in WORDS + ["unused"]}
  with open(root / "glove.txt", "w") as f:
    for w, v in vectors.items():
      f.write(w + " " + " ".join(f"{x:.5f}" for x in v) + "\n")
  with open(root / "embs.json", "w") as f:
    json.dump({"vocab": list(vectors), "emba": [v.tolist() for v in vectors.values()]
               + [[0.0] * 300]}, f)
  return train, vectors


def test_sent140_tweets_are_their_first_25_words_frozen_vectors(tmp_path):
  train, vectors = _sent140_folder(tmp_path)
  users = leaf.read_users(str(tmp_path))
  fed = leaf.federation_of(users, sent140.encoder(users, str(tmp_path / "glove.txt")), 2)
  first = sorted(train)[0]
  record, label = train[first]["x"][0], train[first]["y"][0]
  words = sent140.split_line(record[4])
  want = np.zeros((25, 300), np.float32)
  for j, w in enumerate(words[:25]):
    want[j] = vectors.get(w, np.zeros(300))
  np.testing.assert_allclose(fed.train.x[0], want, rtol=1e-6)
  assert fed.train.y[0] == (1 if label == "4" else 0) and fed.input_spec.shape == (25, 300)
  assert any(len(sent140.split_line(r[4])) > 25 for u in train.values() for r in u["x"])
  from_json = leaf.federation_of(users, sent140.encoder(users, str(tmp_path / "embs.json")), 2)
  assert from_json.stats["data_sha256"] == fed.stats["data_sha256"]
  # Bad inputs: one line each.
  os.mkfifo(tmp_path / "fifo.txt")  # never waited on
  for path, says in ((tmp_path / "none.txt", "cannot read the embeddings"),
                     (tmp_path / "fifo.txt", "it is not a regular file"),
                     (tmp_path / "train" / "all_data_niid_03_keep_30_train_8.json",
                      "not LEAF's embs.json nor a GloVe .txt")):
    with pytest.raises(DataError, match=says) as e:
      sent140.encoder(users, str(path))
    assert "\n" not in str(e.value)
  users.train[first][1][0] = "2"
  with pytest.raises(DataError, match=r"the sentiment '2' is neither '4' \(positive\) nor '0'"):
    leaf.federation_of(users, sent140.encoder(users, str(tmp_path / "glove.txt")), 2)


def test_the_sentiment_lstm_is_the_authors_one_logit_model():
  model = stacked_lstm.SentimentLSTM(hidden=8)
  x = jax.random.normal(jax.random.key(1), (4, 6, 300))
  params = model.init(jax.random.key(0), x)
  logits = model.apply(params, x)
  p = params["params"]
  h = _looped_layers(p, x, 8, 2, 1.0)[:, -1]
  z = (h @ p["hidden"]["kernel"] + p["hidden"]["bias"]) @ p["logit"]["kernel"] + p["logit"]["bias"]
  np.testing.assert_allclose(logits, jnp.concatenate([jnp.zeros_like(z), z], -1), rtol=1e-5, atol=1e-6)
  assert p["hidden"]["kernel"].shape == (8, 30) and p["logit"]["kernel"].shape == (30, 1)
  # Softmax cross-entropy on (0, z) is the sigmoid cross-entropy on z; argmax is z > 0.
  import optax
  y = jnp.array([0, 1, 1, 0])
  np.testing.assert_allclose(optax.softmax_cross_entropy_with_integer_labels(logits, y),
                             optax.sigmoid_binary_cross_entropy(z[:, 0], y), rtol=1e-5, atol=1e-6)
  assert (jnp.argmax(logits, -1) == (z[:, 0] > 0)).all()


def test_sent140_runs_from_its_config_and_needs_its_embeddings(tmp_path):
  _sent140_folder(tmp_path / "leaf")
  common = ["--config=configs/leaf.py:sent140", f"--config.data_dir={tmp_path / 'leaf'}",
            "--config.num_clients=6", "--config.clients_per_round=3", "--config.num_rounds=2",
            "--config.local_epochs=1"]
  workdir = tmp_path / "run"
  result = _launch(*common, f"--config.embeddings={tmp_path / 'leaf' / 'glove.txt'}",
                   f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert (config["model"], config["mu"], config["lr"]) == ("sent140_lstm", 0.01, 0.3)
  assert [r["round"] for r in read_rows(workdir / "metrics.jsonl")] == [1, 2]
  missing = _launch(*common, f"--workdir={tmp_path / 'bad'}")
  assert missing.returncode == 2 and "config.embeddings='': data='sent140' looks" in missing.stderr
  other = _launch("--config=configs/mnist.py:fedprox", "--config.embeddings=glove.txt",
                  f"--workdir={tmp_path / 'bad'}")
  assert other.returncode == 2 and ("config.embeddings='glove.txt': applies to data='sent140' "
                                    "only") in other.stderr
  assert not (tmp_path / "bad").exists()


def test_table1_counts_each_federation_given_and_says_how_to_get_the_others(tmp_path):
  from helpers import write_idx_dir
  names, train, test = _femnist_folder(tmp_path / "femnist")
  roles, roles_test = _shakespeare_folder(tmp_path / "shakespeare")
  write_idx_dir(tmp_path / "idx", num_train=2000, num_test=300)  # not the published MNIST
  out = tmp_path / "table1.md"
  result = subprocess.run(
      [sys.executable, "-m", "fedprox_jax.run.table1", f"--mnist_dir={tmp_path / 'idx'}",
       f"--femnist_dir={tmp_path / 'femnist'}", f"--shakespeare_dir={tmp_path / 'shakespeare'}",
       f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {line.split(" | ")[0].strip("| "): line for line in out.read_text().splitlines()[2:]}
  assert out.read_text() == result.stdout
  sizes = np.array([len(train[n]["y"]) + len(test[n]["y"]) for n in sorted(names)])
  assert rows["FEMNIST"].startswith(f"| FEMNIST | {len(names)} | {sizes.sum()} | "
                                    f"{sizes.mean():,.0f} ({sizes.std():,.0f}) | 200 | 18,345 |")
  shakespeare = sum(len(roles[r]["y"]) + len(roles_test[r]["y"]) for r in roles)
  assert rows["Shakespeare"].startswith(f"| Shakespeare | {len(roles)} | {shakespeare} |")
  assert "not given: pass --sent140_dir=DIR" in rows["Sent140"]
  assert rows["MNIST"].startswith("| MNIST | not read: ") and "Traceback" not in result.stderr
  bad = subprocess.run([sys.executable, "-m", "fedprox_jax.run.table1", "--femnist=x"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and "'--femnist=x' is not a flag" in bad.stderr
