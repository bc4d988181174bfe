import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from aelab.data import DeviceBatchLoader, MNISTDataModule, normalize
from aelab.errors import ConfigError, DataError
from aelab.idx import parse_idx, read_idx, read_mnist_split, write_idx


def test_normalize_is_bit_identical_to_totensor_then_normalize():
    from PIL import Image
    from torchvision import transforms

    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    article = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    expected = torch.stack([article(Image.fromarray(im.numpy(), mode="L")) for im in images])
    assert torch.equal(normalize(images), expected)


def test_normalize_maps_0_to_minus_1_and_255_to_plus_1():
    out = normalize(torch.tensor([[[0, 255]]], dtype=torch.uint8))
    assert out.dtype == torch.float32
    assert out.shape == (1, 1, 1, 2)
    assert out.flatten().tolist() == [-1.0, 1.0]


def test_datamodule_reads_both_splits_with_their_sizes(tiny_mnist):
    dm = MNISTDataModule(str(tiny_mnist), batch_size=32)
    dm.setup()
    assert dm.splits["train"][0].shape == (96, 28, 28)
    assert dm.splits["test"][0].shape == (40, 28, 28)
    assert dm.splits["train"][0].dtype == torch.uint8


def test_validation_is_the_official_test_split_and_never_in_training(tiny_mnist):
    dm = MNISTDataModule(str(tiny_mnist), batch_size=32)
    dm.setup()
    test_images, _ = read_mnist_split(tiny_mnist / "MNIST" / "raw", "t10k")
    val = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(val, normalize(torch.from_numpy(np.array(test_images))))
    train = torch.cat([x for x, _ in dm.train_dataloader()])
    assert len(train) == 96
    train_rows = {row.numpy().tobytes() for row in train}
    assert not any(row.numpy().tobytes() in train_rows for row in val)


def test_train_batches_cover_every_image_once_and_keep_the_last_partial_batch(tiny_mnist):
    dm = MNISTDataModule(str(tiny_mnist), batch_size=40)
    dm.setup()
    loader = dm.train_dataloader()
    sizes = [len(x) for x, _ in loader]
    assert sizes == [40, 40, 16]
    assert len(loader) == 3
    labels = torch.cat([y for _, y in loader])
    assert sorted(labels.tolist()) == sorted(dm.splits["train"][1].tolist())


def test_shuffle_depends_only_on_seed_and_epoch():
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1).expand(50, 28, 28).contiguous()
    labels = torch.arange(50)

    def order(seed, epoch):
        loader = DeviceBatchLoader(images, labels, 16, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([y for _, y in loader]).tolist()

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    assert sorted(order(1, 3)) == list(range(50))


def test_standard_dataloader_path_yields_the_same_validation_data(tiny_mnist):
    device = MNISTDataModule(str(tiny_mnist), batch_size=16)
    standard = MNISTDataModule(str(tiny_mnist), batch_size=16, loader="dataloader")
    device.setup()
    standard.setup()
    a = torch.cat([x for x, _ in device.val_dataloader()])
    b = torch.cat([x for x, _ in standard.val_dataloader()])
    assert torch.equal(a, b)
    assert isinstance(standard.train_dataloader(), torch.utils.data.DataLoader)


def test_keep_digits_filters_training_but_not_validation(tiny_mnist):
    dm = MNISTDataModule(str(tiny_mnist), keep_digits=[3])
    dm.setup()
    assert set(dm.splits["train"][1].tolist()) == {3}
    assert len(dm.splits["test"][1]) == 40


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "data.batch_size must be a positive integer, got 0"),
        ({"loader": "fast"}, "data.loader='fast' is not one of device, dataloader"),
        ({"keep_digits": [11]}, "data.keep_digits must list digits 0-9"),
    ],
)
def test_datamodule_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MNISTDataModule(str(tmp_path), **kwargs)


def test_missing_data_without_download_says_where_the_files_go(tmp_path):
    dm = MNISTDataModule(str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "data.data_dir=" in message


def test_idx_roundtrip_plain_and_gzip(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        assert np.array_equal(read_idx(tmp_path / name, ndim=3), array)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\x00", "truncated IDX file"),
        (b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc", "wrong IDX magic"),
        (b"\x00\x00\x08\x03" + (3).to_bytes(4, "big") + b"abc", "has 3 dimensions, expected 1"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc", "truncated: header says shape"),
        (b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"abc", "has trailing bytes"),
    ],
)
def test_parse_idx_names_what_is_wrong(raw, message):
    with pytest.raises(DataError, match=message):
        parse_idx(raw, name="labels.idx", ndim=1)


def test_image_label_count_mismatch_is_named(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="holds 3 images but .* holds 2 labels"):
        read_mnist_split(raw, "train")


def test_labels_out_of_range_are_named(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", np.array([1, 12], np.uint8))
    with pytest.raises(DataError, match="label 12 is out of range 0-9"):
        read_mnist_split(raw, "train")


@pytest.mark.slow
def test_mnist10k_has_8000_train_and_2000_test_images(mnist10k):
    dm = MNISTDataModule(str(mnist10k))
    dm.setup()
    assert dm.splits["train"][0].shape == (8000, 28, 28)
    assert dm.splits["test"][0].shape == (2000, 28, 28)
    assert sorted(set(dm.splits["train"][1].tolist())) == list(range(10))
    x, _ = next(iter(dm.val_dataloader()))
    assert x.min() == -1.0 and x.max() == 1.0


@pytest.mark.slow
def test_official_gz_files_match_torchvision_md5_and_parse():
    from torchvision.datasets import MNIST

    folder = os.environ.get("AELAB_MNIST_OFFICIAL_DIR")
    if not folder or not Path(folder).is_dir():
        if os.environ.get("CI"):
            pytest.fail("AELAB_MNIST_OFFICIAL_DIR must point at mnist-official in CI")
        pytest.skip("AELAB_MNIST_OFFICIAL_DIR not set")
    expected = dict(MNIST.resources)
    checked = 0
    for path in sorted(Path(folder).glob("*.gz")):
        assert hashlib.md5(path.read_bytes()).hexdigest() == expected[path.name]
        checked += 1
    assert checked == 3
    labels = read_idx(Path(folder) / "t10k-labels-idx1-ubyte.gz", ndim=1)
    images = read_idx(Path(folder) / "t10k-images-idx3-ubyte.gz", ndim=3)
    assert labels.shape == (10000,) and images.shape == (10000, 28, 28)
