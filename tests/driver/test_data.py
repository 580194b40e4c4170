import gzip

import numpy as np
import pytest
import torch

from nestir.driver.data import affine_augment, load, load_idx, split
from nestir.ir.errors import DataError


def test_mnist5k_and_split():
    d = load("mnist5k")
    assert d.x.shape == (5000, 1, 28, 28) and d.x.dtype == torch.float32
    assert 0 <= float(d.x.min()) and float(d.x.max()) <= 1 and d.classes == 10
    tr, va = split(d, 0.1, 0)
    assert tr.x.shape[0] == 4500 and va.x.shape[0] == 500
    assert len(set(va.y.tolist())) == 10  # shuffled: mnist5k is sorted by label
    tr2, _ = split(d, 0.1, 0)
    assert torch.equal(tr.y, tr2.y)


def write_idx(path, arr, gz):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files(tmp_path, gz):
    ext = ".gz" if gz else ""
    x = np.random.randint(0, 256, (7, 28, 28))
    write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", x, gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", np.arange(7) % 3, gz)
    d = load(f"mnist-idx:{tmp_path}")
    assert d.x.shape == (7, 1, 28, 28) and d.y.tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_bad_data_is_refused(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 4, 4)), False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2), False)
    with pytest.raises(DataError, match="3 images but 2 labels"):
        load_idx(str(tmp_path))
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") * 3 + b"x")
    (tmp_path / "t" / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big"))
    with pytest.raises(DataError, match="truncated"):
        load_idx(str(tmp_path / "t"))
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 4, 4)), y=np.zeros(0, dtype=np.int64))
    with pytest.raises(DataError, match="empty"):
        load(f"npz:{tmp_path / 'e.npz'}")
    np.savez(tmp_path / "l.npz", x=np.zeros((2, 4, 4)), y=np.array([0.5, 1.0]))
    with pytest.raises(DataError, match="integer"):
        load(f"npz:{tmp_path / 'l.npz'}")
    with pytest.raises(DataError, match="unknown data set"):
        load("imagenet")


def test_augment_keeps_shape_and_changes_images():
    x = load("mnist5k").x[:16]
    a = affine_augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and not torch.allclose(a, x)


def test_npz_that_is_not_an_archive(tmp_path):
    import numpy as np
    import pytest

    from nestir.driver.data import load
    from nestir.ir.errors import DataError

    bad = tmp_path / "random.npz"
    bad.write_bytes(bytes(range(256)) * 4)
    npy = tmp_path / "renamed.npz"
    np.save(tmp_path / "x.npy", np.zeros((3, 4)))
    (tmp_path / "x.npy").rename(npy)
    for path in (bad, npy):
        with pytest.raises(DataError, match="not an npz archive"):
            load(f"npz:{path}")


def test_split_caps_validation_and_audit_and_leaves_small_data_alone():
    from nestir.driver.data import Dataset, split3

    d = Dataset(torch.rand(1000, 1, 4, 4), torch.arange(1000) % 10, "d")
    s = split3(d, 0.2, 0.1, 0, max_val=50, max_audit=30)
    assert (len(s.val), len(s.audit), len(s.train)) == (50, 30, 920)
    ids = torch.cat([s.train.x, s.val.x, s.audit.x]).flatten(1)[:, 0]
    assert len(set(ids.tolist())) == 1000  # disjoint, and every sample is somewhere
    # caps above the fractions change nothing: the same splits as without caps (mnist5k's runs)
    a, b = split3(d, 0.2, 0.1, 0, max_val=10_000, max_audit=5_000), split3(d, 0.2, 0.1, 0)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.audit.x, b.audit.x) and torch.equal(a.train.x, b.train.x)
