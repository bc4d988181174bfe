"""A user's own images of any shape: a folder of PNGs (data=folder) and an .npz of arrays
(data=arrays), 3x32x32 colour and 1x64x64 grey, trained with both backbones and used by every task
without a data override; the model rebuilds its shape from the checkpoint alone."""

import json

import numpy as np
import pytest
import torch

from aelab.data.own import ArrayDataModule, ImageFolderDataModule
from aelab.errors import ConfigError, DataError
from aelab.models.backbones import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, conv_layout
from aelab.runs import open_run
from aelab.tasks.train import train

from conftest import QUIET, REPO, compose_config, run_cli

CLASSES = ("circle", "square")


def picture(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A (size, size, 3) uint8 picture: a red disc (class 0) or a blue square (class 1) on noise."""
    image = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    y, x = np.mgrid[:size, :size]
    middle = size / 2 + rng.integers(-3, 4)
    if label == 0:
        image[(y - middle) ** 2 + (x - middle) ** 2 < (size / 4) ** 2] = (230, 40, 40)
    else:
        image[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (40, 40, 230)
    return image


def write_folder(root, n_per_class: int = 24, size: int = 32, seed: int = 0):
    """``root/<class>/<i>.png``: colour PNGs of two classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(picture(label, rng, size)).save(root / name / f"{i:03d}.png")
    return root


def write_arrays(path, n: int = 48, size: int = 64, seed: int = 1):
    """An .npz of grey (N, 64, 64) images (channels dimension left out) and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = np.stack([picture(int(label), rng, size).max(axis=2) for label in labels])
    np.savez(path, images=images, labels=labels)
    return path, images, labels


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 64, 64), (3, 28, 28), (1, 33, 47)])
@pytest.mark.parametrize("latent_dim", [None, 6])
def test_the_conv_backbone_builds_for_any_image_shape_and_gives_it_back(shape, latent_dim):
    encoder, decoder = ConvEncoder(list(shape), latent_dim), ConvDecoder(list(shape), latent_dim)
    x = torch.zeros(2, *shape)
    z = encoder(x)
    assert z.shape == ((2, latent_dim) if latent_dim else (2, *conv_layout(shape)[-1]))
    assert decoder(z).shape == (2, *shape)


def test_the_conv_layout_is_the_articles_for_28x28_and_halves_to_its_64x2x2_otherwise():
    assert conv_layout((1, 28, 28)) == [(1, 28, 28), (32, 5, 5), (64, 2, 2)]
    assert conv_layout((3, 32, 32)) == [(3, 32, 32), (32, 16, 16), (64, 8, 8), (64, 4, 4), (64, 2, 2)]
    assert conv_layout((1, 64, 64))[-1] == (64, 2, 2)
    assert conv_layout((1, 33, 47))[-1] == (64, 2, 2)
    assert conv_layout((1, 20, 80))[-1] == (64, 2, 5)


def test_the_mlp_takes_any_flattened_image():
    encoder, decoder = MLPEncoder([3, 32, 32], 5), MLPDecoder([3, 32, 32], 5)
    assert encoder[1].in_features == 3 * 32 * 32
    assert decoder(encoder(torch.zeros(2, 3, 32, 32))).shape == (2, 3, 32, 32)


def test_a_folder_of_class_folders_is_read_as_colour_images_split_by_a_seeded_fraction(tmp_path):
    write_folder(tmp_path / "pictures")
    dm = ImageFolderDataModule(str(tmp_path / "pictures"))
    dm.setup()
    assert dm.classes == CLASSES and dm.image_shape == (3, 32, 32)
    train_images, train_labels = dm.splits["train"]
    test_images, test_labels = dm.splits["test"]
    assert (len(train_images), len(test_images)) == (38, 10)  # 48 images, test_fraction 0.2
    assert train_images.dtype == torch.uint8 and train_images.shape[1:] == (3, 32, 32)
    assert sorted(torch.cat([train_labels, test_labels]).tolist()) == [0] * 24 + [1] * 24
    # the validation split is the test split, as for MNIST
    assert torch.equal(dm.splits["val"][0], test_images)
    # the pixels are the PNG's, channels first
    from PIL import Image

    first = np.asarray(Image.open(tmp_path / "pictures" / "circle" / "000.png")).transpose(2, 0, 1)
    assert any(np.array_equal(first, image.numpy()) for image in torch.cat([train_images, test_images]))
    # split_seed decides the test set; the training seed does not
    again = ImageFolderDataModule(str(tmp_path / "pictures"), seed=5)
    assert torch.equal(again.official_split("test")[0], test_images)
    other = ImageFolderDataModule(str(tmp_path / "pictures"), split_seed=1)
    assert not torch.equal(other.official_split("test")[0], test_images)


def test_a_folder_is_resized_to_the_size_asked_for_and_made_grey_on_request(tmp_path):
    write_folder(tmp_path / "pictures", n_per_class=3, size=40)
    dm = ImageFolderDataModule(str(tmp_path / "pictures"), size=[24, 20], channels=1, test_fraction=0.5)
    assert dm.image_shape == (1, 24, 20)
    # unlabelled images right in the folder: one class, named after it
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for path in (tmp_path / "pictures" / "circle").iterdir():
        path.rename(unlabelled / path.name)
    one = ImageFolderDataModule(str(unlabelled), test_fraction=0.34)
    assert one.classes == ("unlabelled",) and one.image_shape == (3, 40, 40)


def test_an_array_file_is_read_with_its_labels_in_any_channel_order(tmp_path):
    path, images, labels = write_arrays(tmp_path / "grey.npz")
    dm = ArrayDataModule(str(path), classes=list(CLASSES))
    dm.setup()
    assert dm.image_shape == (1, 64, 64) and dm.classes == CLASSES
    train_images, _ = dm.official_split("train")
    test_images, _ = dm.official_split("test")
    assert (len(train_images), len(test_images)) == (38, 10)
    # every image once, as stored
    stored = sorted(image.tobytes() for image in images)
    assert sorted(image.numpy().tobytes() for image in torch.cat([train_images, test_images])) == stored
    colour = np.stack([picture(0, np.random.default_rng(i)) for i in range(5)])
    np.savez(tmp_path / "last.npz", images=colour)  # channels last, no labels: one class
    np.savez(tmp_path / "first.npz", images=colour.transpose(0, 3, 1, 2))
    last = ArrayDataModule(str(tmp_path / "last.npz"), test_fraction=0.4)
    first = ArrayDataModule(str(tmp_path / "first.npz"), test_fraction=0.4)
    assert last.image_shape == first.image_shape == (3, 32, 32) and last.classes == ("0",)
    assert torch.equal(last.official_split("train")[0], first.official_split("train")[0])


@pytest.fixture(scope="module")
def own_runs(tmp_path_factory):
    """Tiny finished runs on a folder of 3x32x32 PNGs and on an .npz of 1x64x64 images, conv and MLP."""
    root = tmp_path_factory.mktemp("own")
    # 120 images: the test split's 24 are enough for the maps' trustworthiness (21)
    folder = write_folder(root / "pictures", n_per_class=60)
    npz, _, _ = write_arrays(root / "grey.npz", n=120)
    trained = {}
    for data, place in (("folder", f"data.root={folder}"), ("arrays", f"data.path={npz}")):
        for model in ("conv", "mlp"):
            cfg = compose_config(
                "train", root, [f"data={data}", place, f"model={model}", "trainer.max_epochs=1", QUIET]
            )
            cfg.paths.output_dir = str(root / f"{data}-{model}")
            trained[data, model] = train(cfg)
    return root, trained


@pytest.mark.slow
@pytest.mark.parametrize(("data", "shape"), [("folder", (3, 32, 32)), ("arrays", (1, 64, 64))])
@pytest.mark.parametrize("model", ["conv", "mlp"])
def test_a_run_on_own_images_remembers_its_shape_and_reopens_without_data_settings(own_runs, data, shape, model):
    root, trained = own_runs
    summary = trained[data, model]
    assert summary["status"] == "ok" and summary["dataset"] == data
    checkpoint = torch.load(summary["last_checkpoint"], weights_only=True)
    assert checkpoint["hyper_parameters"]["image_shape"] == list(shape)
    loaded = open_run(summary["last_checkpoint"])
    assert loaded.model.image_shape == shape and loaded.datamodule.image_shape == shape
    images, _ = loaded.datamodule.split("test")
    assert loaded.reconstruct(images).shape == (len(images), *shape)
    report = run_task(root, "eval", f"ckpt_path={summary['last_checkpoint']}")
    assert report["test/mse"] == pytest.approx(summary["val/mse"], rel=1e-5)
    if model == "conv":
        assert loaded.latent_shape == conv_layout(shape)[-1] and summary["latent_shape"] == list(loaded.latent_shape)


def run_task(root, name, *overrides):
    from aelab.cli import task_function

    return task_function(name)(compose_config(name, root, list(overrides)))


# both shapes and both backbones, the pairs the reopening test leaves out of the every-task one
@pytest.mark.slow
@pytest.mark.parametrize(("data", "shape", "model"), [("folder", (3, 32, 32), "conv"), ("arrays", (1, 64, 64), "mlp")])
def test_every_task_runs_on_the_run_with_no_data_override_and_draws_in_its_colours(own_runs, data, shape, model):
    from PIL import Image

    root, trained = own_runs
    summary = trained[data, model]
    ckpt, run = f"ckpt_path={summary['last_checkpoint']}", root / f"{data}-{model}"
    report = run_task(root, "eval", ckpt)
    assert report["test/mse"] == pytest.approx(summary["val/mse"], rel=1e-5)
    assert list(report["test/mse_per_class"]) == (list(CLASSES) if data == "folder" else ["0", "1"])
    analysis = run_task(root, "analyze", ckpt, "map=pca", "umap_gmm=false", "knn_k=3")
    assert 0 <= analysis["latent/knn_accuracy"] <= 1
    for figure in (run / "eval_reconstructions.png", run / "analysis" / "interpolation.png"):
        with Image.open(figure) as image:
            pixels = np.asarray(image.convert("RGB")).astype(int)
        # colour for 3 channels (red discs, blue squares); a grey colour map has R = G = B
        coloured = (pixels[..., 0] - pixels[..., 2]).max() > 100 and (pixels[..., 2] - pixels[..., 0]).max() > 100
        assert coloured == (shape[0] == 3), figure
    encoded = run_task(root, "encode", ckpt)
    with np.load(encoded["files"][0]) as latents:
        assert latents["latents"].shape[1] == summary["latent_size"]
    decoded = run_task(root, "decode", ckpt, f"latents={encoded['files'][0]}")
    with np.load(decoded["files"][0]) as images:
        assert images["images"].shape[1:] == shape


@pytest.mark.slow
def test_the_data_pages_dataset_yaml_trains_from_the_command_line(tmp_path):
    """The own dataset of docs/data.md (one yaml on top of data=folder), its root pointed at a test folder."""
    from pages import code

    (block,) = [text for text in code(REPO / "docs" / "data.md", "yaml") if text.startswith("# configs/data/pets.yaml")]
    folder = write_folder(tmp_path / "pets", n_per_class=6)
    (tmp_path / "configs" / "data").mkdir(parents=True)
    (tmp_path / "configs" / "data" / "pets.yaml").write_text(block.replace("root: /data/pets", f"root: {folder}"))
    result = run_cli(
        "train.py",
        *("--config-dir", str(tmp_path / "configs"), "data=pets", "model=conv", "trainer.max_epochs=1"),
        *(f"paths.log_dir={tmp_path / 'logs'}", QUIET),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (summary,) = (tmp_path / "logs" / "train" / "runs").glob("*/run_summary.json")
    summary = json.loads(summary.read_text())
    assert (summary["dataset"], summary["data"]) == ("folder", "pets")
    assert summary["image_shape"] == [3, 64, 64] and summary["latent_shape"] == [64, 2, 2]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d, "holds no images"),
        (lambda d: d / "absent", "does not exist; point at a folder of class folders of images: data.root="),
    ],
)
def test_a_bad_folder_is_one_line(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        ImageFolderDataModule(str(make(tmp_path))).setup()


def test_a_bad_array_file_is_one_line(tmp_path):
    np.savez(tmp_path / "floats.npz", images=np.zeros((4, 8, 8), dtype=np.float32))
    with pytest.raises(DataError, match=r"images are float32; store pixels as uint8 0-255"):
        ArrayDataModule(str(tmp_path / "floats.npz")).setup()
    with pytest.raises(ConfigError, match=r"data.test_fraction=0.2 of the 2 images"):
        np.savez(tmp_path / "two.npz", images=np.zeros((2, 8, 8), dtype=np.uint8))
        ArrayDataModule(str(tmp_path / "two.npz")).setup()


@pytest.mark.slow
@pytest.mark.extra("export")
@pytest.mark.parametrize(("data", "model", "shape"), [("folder", "conv", (3, 32, 32)), ("arrays", "mlp", (1, 64, 64))])
def test_a_run_on_own_images_exports_with_its_own_shape(own_runs, data, model, shape):
    import onnx

    root, trained = own_runs
    result = run_task(root, "export", f"ckpt_path={trained[data, model]['last_checkpoint']}")
    assert result["input"] == f"float32 images (N, {', '.join(map(str, shape))}) in [-1, 1]: pixels / 127.5 - 1"
    assert max(result["max_abs_diff"].values()) < 1e-4
    encoder = onnx.load(result["files"]["encoder"])
    assert [d.dim_value for d in encoder.graph.input[0].type.tensor_type.shape.dim][1:] == list(shape)


def test_the_pca_baseline_on_fewer_images_than_pixels_is_the_covariances():
    """The singular vectors of 50 images of 300 pixels give the MSE the 300x300 covariance gives
    (the same images 7 times over: as many rows as needed for the covariance's route)."""
    from aelab.report.metrics import pca_reconstruction_mse

    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(50, 300)), rng.normal(size=(20, 300))
    few = pca_reconstruction_mse(train, test, [2, 10, 40])
    many = pca_reconstruction_mse(np.concatenate([train] * 7), test, [2, 10, 40])
    assert few == pytest.approx(many, rel=1e-12) and few[2] > few[10] > few[40]


def test_sixteen_bit_grey_pngs_are_scaled_to_eight_bits_not_clipped(tmp_path):
    from PIL import Image

    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65,520
    (tmp_path / "scans").mkdir()
    for i in range(5):
        Image.fromarray(ramp).save(tmp_path / "scans" / f"{i}.png")
    images, _ = ImageFolderDataModule(str(tmp_path / "scans")).official_split("train")
    assert images.shape[1:] == (1, 64, 64)
    assert np.array_equal(images[0, 0].numpy(), (ramp / 257).round().astype(np.uint8))


def test_the_projector_takes_images_that_are_not_square(tmp_path):
    """Its sprite tiles square thumbnails: a 6x10 image is padded to 10x10, in the middle."""
    from PIL import Image

    from aelab.report import projector

    images = torch.full((4, 3, 6, 10), 255, dtype=torch.uint8)
    projector.add_embedding(tmp_path, "test", "test latents", torch.zeros(4, 2), images, {"label": ["a"] * 4})
    (sprite,) = (tmp_path / "00000" / "test").glob("sprite.png")
    with Image.open(sprite) as tiles:
        pixels = np.asarray(tiles.convert("L"))
    assert pixels.shape == (20, 20)  # 2 x 2 thumbnails of 10 x 10
    assert pixels[2:8, :10].min() == 255 and pixels[:2, :10].max() == 0 and pixels[8:10, :10].max() == 0


@pytest.mark.slow
def test_a_run_whose_folder_moved_opens_and_decodes_and_eval_names_the_folder(tmp_path):
    """The model keeps its image shape: opening a run to decode reads no images; eval, which
    needs them, says where they were, and takes data.root= of the new place."""
    folder = write_folder(tmp_path / "pictures", n_per_class=5)
    cfg = compose_config("train", tmp_path, ["data=folder", f"data.root={folder}", "trainer.max_epochs=1", QUIET])
    summary = train(cfg)
    moved = folder.rename(tmp_path / "moved")
    loaded = open_run(summary["last_checkpoint"])
    assert loaded.decode(torch.zeros(2, 3)).shape == (2, 3, 32, 32)
    with pytest.raises(DataError, match=f"data.root={folder} does not exist"):
        run_task(tmp_path, "eval", f"ckpt_path={summary['last_checkpoint']}")
    report = run_task(tmp_path, "eval", f"ckpt_path={summary['last_checkpoint']}", f"data.root={moved}")
    assert report["test/mse"] == pytest.approx(summary["val/mse"], rel=1e-5)


def test_float_grey_tiffs_are_scaled_from_0_1(tmp_path):
    from PIL import Image

    ramp = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    (tmp_path / "floats").mkdir()
    for i in range(5):
        Image.fromarray(ramp).save(tmp_path / "floats" / f"{i}.tif")
    images, _ = ImageFolderDataModule(str(tmp_path / "floats")).official_split("train")
    assert np.array_equal(images[0, 0].numpy(), (ramp.astype(np.float64) * 255).round().astype(np.uint8))


def test_a_code_no_smaller_than_the_image_is_warned_about(caplog):
    from aelab.models import AutoEncoder

    parts = {
        "encoder": {"_target_": "aelab.models.backbones.ConvEncoder"},
        "decoder": {"_target_": "aelab.models.backbones.ConvDecoder"},
        "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True},
    }
    AutoEncoder(image_shape=[1, 28, 28], **parts)
    assert not caplog.records
    AutoEncoder(image_shape=[1, 4, 4], **parts)  # one stride-2 stage: a 32x2x2 map for 16 pixels
    (record,) = caplog.records
    assert record.getMessage().startswith("the code holds 128 numbers and an image 16: the model can copy images")
