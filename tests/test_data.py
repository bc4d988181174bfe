import functools
import hashlib
import itertools
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from aelab.data import DATASETS, DeviceBatchLoader, MNISTLikeDataModule, normalize
from aelab.data.idx import parse_idx, read_idx, read_split, write_idx
from aelab.errors import ConfigError, DataError
from aelab.fast.chunks import Chunks, batches_in, steps_in

from conftest import make_tiny_dataset


def test_normalize_is_bit_identical_to_totensor_then_normalize():
    from PIL import Image
    from torchvision import transforms

    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    article = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    expected = torch.stack([article(Image.fromarray(im[0].numpy(), mode="L")) for im in images])
    assert torch.equal(normalize(images), expected)


def test_normalize_maps_0_to_minus_1_and_255_to_plus_1():
    out = normalize(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
    assert out.dtype == torch.float32
    assert out.shape == (1, 1, 1, 2)
    assert out.flatten().tolist() == [-1.0, 1.0]


def test_datamodule_reads_both_splits_with_their_sizes(tiny_mnist):
    dm = MNISTLikeDataModule(str(tiny_mnist), batch_size=32)
    dm.setup()
    assert dm.splits["train"][0].shape == (96, 1, 28, 28)
    assert dm.splits["test"][0].shape == (40, 1, 28, 28)
    assert dm.image_shape == (1, 28, 28)
    assert dm.splits["train"][0].dtype == torch.uint8


def test_validation_is_the_official_test_split_and_never_in_training(tiny_mnist):
    dm = MNISTLikeDataModule(str(tiny_mnist), batch_size=32)
    dm.setup()
    test_images, _ = read_split(tiny_mnist / "MNIST" / "raw", "test")
    val = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(val, normalize(torch.from_numpy(np.array(test_images))).unsqueeze(1))
    train = torch.cat([x for x, _ in dm.train_dataloader()])
    assert len(train) == 96
    train_rows = {row.numpy().tobytes() for row in train}
    assert not any(row.numpy().tobytes() in train_rows for row in val)


def test_train_batches_cover_every_image_once_and_keep_the_last_partial_batch(tiny_mnist):
    dm = MNISTLikeDataModule(str(tiny_mnist), batch_size=40)
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


@pytest.mark.parametrize("overfit_batches", [0, 1])
def test_debug_overfit_trains_on_the_same_first_batch_every_epoch(tiny_mnist, overfit_batches):
    import lightning as L

    dm = MNISTLikeDataModule(str(tiny_mnist), batch_size=16)
    dm.trainer = L.Trainer(overfit_batches=overfit_batches, logger=False, enable_progress_bar=False)
    loader = dm.train_dataloader()
    first_labels = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        first_labels.append(next(iter(loader))[1].tolist())
    assert (first_labels[0] == first_labels[1]) == bool(overfit_batches)


def test_chunks_hold_the_same_batches_in_the_same_order_and_resume_counts_batches():
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1).expand(50, 28, 28).contiguous()
    labels = torch.arange(50)

    def batches(steps_per_call, skip=0):
        loader = Chunks(DeviceBatchLoader(images, labels, 8, shuffle=True, seed=5), steps_per_call)
        loader.sampler.set_epoch(2)  # as Lightning sets the epoch
        loader.loader.skip_once = skip
        chunks = list(loader)
        assert skip or len(chunks) == len(loader)
        # each chunk says how many of the epoch's batches are done once it is
        assert [c["epoch_batches_done"] for c in chunks] == list(
            itertools.accumulate([skip] + [steps_in(c) for c in chunks])
        )[1:]
        assert [c["last"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
        return [y.tolist() for chunk in chunks for _, y in batches_in(chunk)], [steps_in(c) for c in chunks]

    one, sizes = batches(1)
    assert sizes == [1] * 7  # 50 images in batches of 8: 6 full and one of 2
    chunked, sizes = batches(3)
    assert chunked == one and sizes == [3, 3, 1]
    # a resume skips batches, not chunks: the rest of the epoch whatever the chunk size
    assert batches(3, skip=4)[0] == one[4:] and batches(3, skip=4)[1] == [3]


def test_standard_dataloader_path_yields_the_same_validation_data(tiny_mnist):
    device = MNISTLikeDataModule(str(tiny_mnist), batch_size=16)
    standard = MNISTLikeDataModule(str(tiny_mnist), batch_size=16, loader="dataloader")
    device.setup()
    standard.setup()
    a = torch.cat([x for x, _ in device.val_dataloader()])
    b = torch.cat([x for x, _ in standard.val_dataloader()])
    assert torch.equal(a, b)
    assert isinstance(standard.train_dataloader(), torch.utils.data.DataLoader)


def test_keep_classes_filters_training_but_not_validation(tiny_mnist):
    dm = MNISTLikeDataModule(str(tiny_mnist), keep_classes=[3])
    dm.setup()
    assert set(dm.splits["train"][1].tolist()) == {3}
    assert len(dm.splits["val"][1]) == 40 and len(dm.splits["test"][1]) == 40


def test_val_size_carves_a_seeded_validation_set_out_of_training(tiny_mnist):
    dm = MNISTLikeDataModule(str(tiny_mnist), val_size=16, seed=3)
    dm.setup()
    train, val, test = (dm.splits[s][0] for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (80, 16, 40)
    all_train, _ = read_split(tiny_mnist / "MNIST" / "raw", "train")
    rows = {image.tobytes() for image in all_train}
    # train and val partition the official training split; the test split is untouched
    assert {im.numpy().tobytes() for im in torch.cat([train, val])} == rows
    assert torch.equal(test[:, 0], torch.from_numpy(np.array(read_split(tiny_mnist / "MNIST" / "raw", "test")[0])))
    again = MNISTLikeDataModule(str(tiny_mnist), val_size=16, seed=3)
    again.setup()
    assert torch.equal(again.splits["val"][0], val)
    other = MNISTLikeDataModule(str(tiny_mnist), val_size=16, seed=4)
    other.setup()
    assert not torch.equal(other.splits["val"][0], val)
    val_batches = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(val_batches, normalize(val))


def test_val_size_that_leaves_no_training_data_is_refused(tiny_mnist):
    dm = MNISTLikeDataModule(str(tiny_mnist), val_size=96)
    with pytest.raises(ConfigError, match="data.val_size=96 leaves no training images: the training split holds 96"):
        dm.setup()


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_each_dataset_reads_its_own_folder_and_names_its_classes(tmp_path, dataset):
    make_tiny_dataset(tmp_path, dataset)
    dm = MNISTLikeDataModule(str(tmp_path), dataset=dataset)
    dm.setup()
    assert dm.raw_dir == tmp_path / DATASETS[dataset].torchvision_class / "raw"
    assert len(dm.splits["train"][0]) == 96
    assert len(dm.classes) == 10


def test_fashion_mnist_classes_are_the_clothing_names():
    assert DATASETS["fashion_mnist"].classes[0] == "T-shirt/top"
    assert DATASETS["fashion_mnist"].classes[9] == "Ankle boot"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "data.batch_size=0 is invalid: it must be a positive integer"),
        ({"loader": "fast"}, "data.loader='fast' is invalid: it must be one of device, dataloader"),
        ({"keep_classes": [11]}, r"data.keep_classes=\[11\] is invalid: list class indices 0-9 of MNIST"),
        ({"dataset": "cifar"}, "data.dataset='cifar' is not one of mnist, fashion_mnist, kmnist"),
        ({"val_size": 0}, "data.val_size=0 is invalid: it must be a positive integer or null"),
    ],
)
def test_datamodule_rejects_bad_arguments(tmp_path, kwargs, message):
    """Built as a checkpoint's data config is (aelab.registry.build): by the types its signature
    declares first, then by what only the class knows (its dataset's classes)."""
    from aelab.registry import build

    spec = {"_target_": "aelab.data.datamodule.MNISTLikeDataModule", "data_dir": str(tmp_path), **kwargs}
    with pytest.raises(ConfigError, match=message):
        build(spec, "data")


def test_missing_data_without_download_says_where_the_files_go(tmp_path):
    dm = MNISTLikeDataModule(str(tmp_path / "nowhere"), dataset="fashion_mnist", download=False)
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert message.startswith(f"Fashion-MNIST not found in {tmp_path / 'nowhere' / 'FashionMNIST' / 'raw'}")
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "data.data_dir=" in message


def test_idx_roundtrip_plain_and_gzip(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        assert np.array_equal(read_idx(tmp_path / name, ndim=3), array)


def test_an_idx_file_is_decoded_once_per_process_until_it_changes(tmp_path):
    path = tmp_path / "a-idx1-ubyte.gz"
    write_idx(path, np.arange(5, dtype=np.uint8))
    first = read_idx(path, ndim=1)
    # the same read-only array for every job of a sweep in this process
    assert read_idx(path, ndim=1) is first and not first.flags.writeable
    write_idx(path, np.arange(7, dtype=np.uint8))
    assert read_idx(path, ndim=1).tolist() == list(range(7))


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
        read_split(raw, "train")


def test_labels_out_of_range_are_named(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", np.array([1, 12], np.uint8))
    with pytest.raises(DataError, match="label 12 is out of range 0-9"):
        read_split(raw, "train")


@pytest.mark.slow
def test_the_official_mnist_has_60000_train_and_10000_test_images(mnist):
    dm = MNISTLikeDataModule(str(mnist), download=False)
    dm.setup()
    assert dm.splits["train"][0].shape == (60000, 1, 28, 28)
    assert dm.splits["test"][0].shape == (10000, 1, 28, 28)
    assert torch.bincount(dm.splits["test"][1]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x, _ = next(iter(dm.val_dataloader()))
    assert x.min() == -1.0 and x.max() == 1.0


@contextmanager
def mirror_of(source_raw: Path, target: Path, corrupt: str | None = None):
    """The four official .gz files served over HTTP on 127.0.0.1, as a download mirror; one may be
    broken. (torchvision's downloader reads ``response.length``, which ``file://`` responses lack.)"""
    target.mkdir(parents=True)
    for path in source_raw.glob("*.gz"):
        data = path.read_bytes()
        if path.name == corrupt:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        (target / path.name).write_bytes(data)
    handler = functools.partial(QuietHandler, directory=str(target))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_download_through_torchvision_from_a_mirror_accepts_the_official_files(tmp_path, dataset, request):
    root = request.getfixturevalue(dataset)
    spec = DATASETS[dataset]
    with mirror_of(spec.raw_dir(root), tmp_path / "mirror") as mirror:
        dm = MNISTLikeDataModule(str(tmp_path / "data"), dataset=dataset, mirrors=[mirror])
        dm.setup()
    assert len(dm.splits["train"][0]) == 60000 and len(dm.splits["test"][0]) == 10000
    import torchvision.datasets

    expected = dict(getattr(torchvision.datasets, spec.torchvision_class).resources)
    for name, md5 in expected.items():
        assert hashlib.md5((dm.raw_dir / name).read_bytes()).hexdigest() == md5
    # nothing but the dataset is left beside it: the staging folder is gone
    assert sorted(p.name for p in dm.raw_dir.parent.iterdir()) == ["raw"]


@pytest.mark.slow
def test_a_corrupted_download_is_refused_with_one_line_naming_the_file(tmp_path, mnist):
    from conftest import run_cli

    with mirror_of(mnist / "MNIST" / "raw", tmp_path / "mirror", corrupt="train-labels-idx1-ubyte.gz") as mirror:
        result = run_cli(
            "train.py",
            f"data.data_dir={tmp_path / 'data'}",
            f"data.mirrors=[{mirror}]",
            f"paths.log_dir={tmp_path / 'logs'}",
        )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("aelab: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "train-labels-idx1-ubyte.gz failed its md5 check against the published sum" in errors[0]
    assert mirror in errors[0] and "Traceback" not in result.stderr
    # nothing half-downloaded is left to be mistaken for data later
    assert not any(p.is_file() for p in (tmp_path / "data").rglob("*"))
