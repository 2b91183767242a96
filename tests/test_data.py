"""MNIST loading: the IDX parser and its validation, TFDS, and both sources agreeing."""

import gzip
import hashlib
import os

import numpy as np
import pytest

from fedprox_jax.data import mnist as data
from helpers import SHARED_DATA, write_idx_dir

needs_mnist = pytest.mark.skipif(
    not os.path.isdir(SHARED_DATA), reason=f"genuine MNIST not found at {SHARED_DATA}")


def _idx(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def test_parse_idx_roundtrip():
  a = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
  np.testing.assert_array_equal(data.parse_idx(_idx(a)), a)


@pytest.mark.parametrize("raw,match", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad magic number"),
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x05", "is not unsigned byte"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated inside its header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "truncated or corrupt"),
])
def test_parse_idx_rejects_bad_files(raw, match):
  with pytest.raises(data.DataError, match=match):
    data.parse_idx(raw, "f")


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_dir_reads_gz_and_plain(tmp_path, gz):
  arrays = write_idx_dir(tmp_path, num_train=50, num_test=20, gz=gz)
  mnist = data.load_idx_dir(str(tmp_path))
  assert mnist.train_images.shape == (50, 28, 28, 1) and mnist.train_images.dtype == np.uint8
  # In TFDS's order (the files' order permuted as TFDS's builder stores them).
  train, test = data.tfds_order(50, "train"), data.tfds_order(20, "test")
  assert sorted(train) == list(range(50)) and list(train) != list(range(50))
  np.testing.assert_array_equal(mnist.test_labels, arrays["test_labels"][test])
  np.testing.assert_array_equal(mnist.train_images[..., 0], arrays["train_images"][train])


def test_load_idx_dir_errors(tmp_path):
  with pytest.raises(data.DataError, match="is not a directory"):
    data.load_idx_dir(str(tmp_path / "nope"))
  with pytest.raises(data.DataError, match="has no train-images-idx3-ubyte"):
    data.load_idx_dir(str(tmp_path))
  write_idx_dir(tmp_path, num_train=10, num_test=5)
  with open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
    f.write(b"not gzip at all")
  with pytest.raises(data.DataError, match="corrupt or truncated"):
    data.load_idx_dir(str(tmp_path))


def test_load_idx_dir_label_count_mismatch(tmp_path):
  write_idx_dir(tmp_path, num_train=10, num_test=5)
  with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
    f.write(_idx(np.zeros(9, np.uint8)))
  with pytest.raises(data.DataError, match="10 train images but 9 labels"):
    data.load_idx_dir(str(tmp_path))


def test_idx_source_needs_a_directory():
  with pytest.raises(data.DataError, match="needs data_dir"):
    data.load_mnist("idx", "")
  with pytest.raises(data.DataError, match="data_source='hdf5' is not one of"):
    data.load_mnist("hdf5", "x")


def test_tfds_offline_without_data_says_what_to_set(tmp_path):
  with pytest.raises(data.DataError, match="TFDS_DATA_DIR") as e:
    data.load_mnist("tfds", str(tmp_path), download=False)
  assert "--config.data_source=idx" in str(e.value)


def test_normalize_matches_seed_constants():
  x = np.array([0, 255], np.uint8)
  np.testing.assert_allclose(data.normalize(x), [(0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081],
                             rtol=1e-6)


@needs_mnist
def test_idx_files_and_tfds_hold_the_same_examples():
  idx = data.load_mnist("idx", os.path.join(SHARED_DATA, "mnist"))
  tfds_copy = data.load_mnist("tfds", os.path.join(SHARED_DATA, "tensorflow_datasets"),
                              download=False)
  for split in ("train", "test"):
    def multiset(m):
      images, labels = getattr(m, f"{split}_images"), getattr(m, f"{split}_labels")
      return sorted(hashlib.sha1(img.tobytes() + bytes([int(lab)])).hexdigest()
                    for img, lab in zip(images, labels))
    a, b = multiset(idx), multiset(tfds_copy)
    assert len(a) == {"train": 60000, "test": 10000}[split]
    assert a == b


def test_normalize_table_equals_the_arithmetic():
  pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
  expected = ((pixels.astype(np.float32) / 255.0 - data.MNIST_MEAN) / data.MNIST_STD).astype(np.float32)
  got = data.normalize(pixels)
  assert got.dtype == np.float32 and got.shape == pixels.shape
  np.testing.assert_array_equal(got, expected)


@needs_mnist
@pytest.mark.parametrize("damage", ["missing_info", "garbage_info"])
def test_damaged_tfds_copy_is_reported_as_damaged_not_missing(tmp_path, damage):
  import shutil
  copy = tmp_path / "tfds"
  shutil.copytree(os.path.join(SHARED_DATA, "tensorflow_datasets"), copy)
  (info,) = copy.glob("mnist/*/dataset_info.json")
  if damage == "missing_info":
    info.unlink()
  else:
    info.write_text("garbage")
  with pytest.raises(data.DataError, match="damaged") as e:
    data.load_mnist("tfds", str(copy), download=False)
  assert "not in the TFDS data dir" not in str(e.value)
  assert f"Delete {copy / 'mnist'}" in str(e.value)


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "mnist")),
                    reason=f"genuine MNIST not found at {SHARED_DATA}/mnist")
def test_the_idx_route_gives_tfds_order():
  """The four IDX files, read and put in TFDS's order, are TFDS 3.0.1's MNIST exactly (the
  digest of its arrays in order): data_source changes no result. (The IDX route gave 0.8473
  where TFDS gives 0.8472: the same examples in another order.)"""
  mnist = data.load_idx_dir(os.path.join(SHARED_DATA, "mnist"))
  assert data.GENUINE_ORDERS.get(data.ordered_digest(*mnist)) == "TFDS 3.0.1's order"
