"""The TFDS path a new user takes: TFDS's real download_and_prepare of ``mnist``, with only the
network replaced by a loopback HTTP server serving ../shared/data/mnist; its worker process,
array cache and error messages."""

import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fedprox_jax.data import mnist as data, tfds_worker
from helpers import SHARED_DATA

needs_mnist = pytest.mark.skipif(
    not os.path.isdir(SHARED_DATA), reason=f"genuine MNIST not found at {SHARED_DATA}")


class _Quiet(http.server.SimpleHTTPRequestHandler):
  requested = []

  def log_message(self, *args):
    pass

  def do_GET(self):
    _Quiet.requested.append(self.path)
    super().do_GET()


@pytest.fixture
def mnist_mirror():
  """A loopback HTTP server with the four IDX .gz files; yields its URL."""
  handler = functools.partial(_Quiet, directory=os.path.join(SHARED_DATA, "mnist"))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  _Quiet.requested = []
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}/"
  finally:
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@needs_mnist
def test_tfds_download_and_prepare_equals_the_idx_files(tmp_path, monkeypatch, mnist_mirror):
  monkeypatch.setenv(tfds_worker.MIRROR_ENV, mnist_mirror)
  monkeypatch.setenv("FEDPROX_JAX_CACHE", str(tmp_path / "cache"))
  data_dir = tmp_path / "tfds"  # does not exist yet: TFDS creates it
  downloaded = data.load_mnist("tfds", str(data_dir), download=True)
  assert sorted(_Quiet.requested) == sorted("/" + stem + ".gz" for stem in data.IDX_FILES.values())
  assert (data_dir / "mnist").is_dir()  # TFDS prepared its own copy there
  # The IDX route gives the same examples in the same order (TFDS's): data_source changes no
  # result, and a run started on one source resumes on the other.
  idx = data.load_mnist("idx", os.path.join(SHARED_DATA, "mnist"))
  for a, b in zip(downloaded, idx):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  assert len(idx.train_labels) == 60000 and len(idx.test_labels) == 10000
  assert data.fingerprint(downloaded) == data.MNIST_FINGERPRINT
  # A second load reads the cache: no server, no TFDS data dir needed.
  monkeypatch.setenv(tfds_worker.MIRROR_ENV, f"http://127.0.0.1:{_closed_port()}/")
  again = data.load_mnist("tfds", str(data_dir), download=True)
  np.testing.assert_array_equal(again.train_images, downloaded.train_images)


@needs_mnist
def test_training_process_never_imports_tensorflow(tmp_path):
  env = {**os.environ, "FEDPROX_JAX_CACHE": str(tmp_path)}
  code = ("import sys; from fedprox_jax.data import mnist as data; "
          f"m = data.load_mnist('tfds', {os.path.join(SHARED_DATA, 'tensorflow_datasets')!r}, False); "
          "assert len(m.train_labels) == 60000; "
          "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'; print('ok')")
  for _ in range(2):  # the first load runs the worker, the second reads the cache
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
  assert len(list(tmp_path.glob("mnist-tfds-*.npz"))) == 1


@needs_mnist
def test_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
  monkeypatch.setenv("FEDPROX_JAX_CACHE", str(tmp_path))
  tfds_dir = os.path.join(SHARED_DATA, "tensorflow_datasets")
  path = data.tfds_cache_path(data.tfds_data_dir(tfds_dir))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(b"PK\x03\x04 not really a zip")
  mnist = data.load_mnist("tfds", tfds_dir, download=False)
  assert data.fingerprint(mnist) == data.MNIST_FINGERPRINT
  assert data._read_cache(path) is not None


def test_offline_download_fails_fast_and_says_offline(tmp_path, monkeypatch):
  # Nothing listens on that port: as on a machine with no network. TFDS's own retries took
  # 3.5 minutes to give up; the reachability check answers at once (the bound is generous).
  monkeypatch.setenv(tfds_worker.MIRROR_ENV, f"http://127.0.0.1:{_closed_port()}/")
  monkeypatch.setenv("FEDPROX_JAX_CACHE", str(tmp_path / "cache"))
  start = time.monotonic()
  with pytest.raises(data.DataError) as e:
    data.load_mnist("tfds", str(tmp_path / "tfds"), download=True)
  assert time.monotonic() - start < 60
  message = str(e.value)
  assert "cannot be reached" in message and "offline" in message
  assert "--config.data_source=idx" in message and "TFDS_DATA_DIR" in message


def test_unresolvable_host_is_reported_as_offline(monkeypatch):
  def no_dns(*args, **kwargs):
    raise socket.gaierror(-2, "Name or service not known")
  monkeypatch.setattr(socket, "create_connection", no_dns)
  with pytest.raises(tfds_worker.WorkerError, match="looks offline"):
    tfds_worker.check_reachable("https://example.invalid/mnist/")


@needs_mnist
def test_a_missing_package_is_not_reported_as_offline(tmp_path, mnist_mirror):
  # importlib_resources, which TFDS imports lazily, made every online first run fail and the
  # message blamed the network.
  hide = tmp_path / "hide"
  hide.mkdir()  # a sitecustomize that makes the installed package unfindable, as if absent
  (hide / "sitecustomize.py").write_text(
      "import sys\n"
      "class _Hide:\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      "    if name.split('.')[0] == 'importlib_resources':\n"
      "      raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
      "sys.meta_path.insert(0, _Hide())\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, "-m", "fedprox_jax.data.tfds_worker", f"--data_dir={tmp_path / 'tfds'}",
       "--download=1", f"--out={tmp_path / 'out.npz'}"], capture_output=True, text=True,
      env={**os.environ, tfds_worker.MIRROR_ENV: mnist_mirror,
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "hide"), root])})
  assert out.returncode == 3, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith(tfds_worker.ERROR_PREFIX)
  assert "importlib_resources" in last and "missing package" in last
  assert "offline" not in last


def test_tfds_without_the_download_names_the_dir_and_the_fix(tmp_path):
  with pytest.raises(data.DataError, match="does not exist and download=False"):
    data.load_mnist("tfds", str(tmp_path / "missing"), download=False)
  with pytest.raises(data.DataError, match="download=False") as e:
    data.load_mnist("tfds", str(tmp_path), download=False)
  assert str(tmp_path) in str(e.value) and "--config.download=True" in str(e.value)


def test_fingerprint_ignores_order_and_sees_any_change():
  rng = np.random.default_rng(0)
  m = data.Mnist(rng.integers(0, 256, (30, 28, 28, 1)).astype(np.uint8),
                 rng.integers(0, 10, 30).astype(np.int32),
                 rng.integers(0, 256, (5, 28, 28, 1)).astype(np.uint8),
                 rng.integers(0, 10, 5).astype(np.int32))
  perm = rng.permutation(30)
  shuffled = m._replace(train_images=m.train_images[perm], train_labels=m.train_labels[perm])
  assert data.fingerprint(shuffled) == data.fingerprint(m)
  relabelled = m._replace(train_labels=(m.train_labels + 1) % 10)
  assert data.fingerprint(relabelled) != data.fingerprint(m)
  swapped = data.Mnist(m.test_images, m.test_labels, m.train_images, m.train_labels)
  assert data.fingerprint(swapped) != data.fingerprint(m)
