"""Using what was trained: eval equals training's own number, encode -> decode reproduces the
model's reconstructions, the ONNX files give PyTorch's outputs in onnxruntime, and ``aelab.load``
is the notebook's one call."""

import csv
import json

import numpy as np
import pytest
import torch

import aelab
from aelab.cli import task_function
from aelab.data import normalize
from aelab.errors import CheckpointError, ConfigError
from aelab.names import VAL_MSE
from aelab.runs import open_run
from aelab.tasks.train import train

from conftest import compose_config, compose_train, events_dir, run_cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished tiny runs: the conv AE with its 64x2x2 map as the code, and an MLP at d=2."""
    from conftest import make_tiny_dataset

    root = tmp_path_factory.mktemp("exports")
    data = make_tiny_dataset(root / "data")
    trained = {}
    for name, overrides in (("conv", ["model=conv", "model.latent_dim=null"]), ("mlp2", ["model.latent_dim=2"])):
        cfg = compose_train(root, data, ["trainer.max_epochs=2", "data.batch_size=32", *overrides])
        cfg.paths.output_dir = str(root / name)
        trained[name] = train(cfg)
    return root, trained


def run_task(root, name, *overrides):
    """A task as its entry point runs it (composed from configs/<name>.yaml), in this interpreter."""
    cfg = compose_config(name, root, list(overrides))
    return task_function(name)(cfg)


def test_eval_of_the_last_checkpoint_gives_the_runs_final_val_mse_and_a_grid(tmp_path, runs):
    root, trained = runs
    summary = trained["mlp2"]
    result = run_cli("eval.py", f"ckpt_path={summary['last_checkpoint']}", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "litmodels" not in result.stdout + result.stderr
    report = json.loads((root / "mlp2" / "eval.json").read_text())
    # validation is the official test split by default: the same images, the same number
    assert report["test/mse"] == pytest.approx(summary[VAL_MSE], rel=1e-6)
    per_class = report["test/mse_per_class"]
    assert list(per_class) == [str(d) for d in range(10)]
    # 4 test images per class: the classes average to the whole
    assert np.mean(list(per_class.values())) == pytest.approx(report["test/mse"], rel=1e-5)
    from PIL import Image

    with Image.open(root / "mlp2" / "eval_reconstructions.png") as grid:
        assert grid.size == (16 * 30 + 2, 2 * 30 + 2)  # 16 test images over their reconstructions

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(events_dir(root / "mlp2")))
    events.Reload()
    # at the run's last epoch: the grid, and the numbers as a table in TEXT
    assert [image.step for image in events.Images("views/test_reconstructions")] == [2]
    (table,) = events.Tensors("test/mse/text_summary")
    text = table.tensor_proto.string_val[0].decode()
    assert table.step == 2 and f"| all | {report['test/mse']:.5f} |" in text and "| 9 |" in text


@pytest.mark.parametrize("run", ["conv", "mlp2"])
def test_encode_then_decode_reproduces_the_models_reconstructions(runs, run):
    root, trained = runs
    ckpt = trained[run]["last_checkpoint"]
    encoded = run_task(root, "encode", f"ckpt_path={ckpt}", "csv=true")
    exports = root / run / "exports"
    with np.load(exports / "latents-test.npz", allow_pickle=False) as arrays:
        latents, labels, errors = arrays["latents"], arrays["labels"], arrays["errors"]
        assert list(arrays["classes"]) == [str(d) for d in range(10)]
        assert tuple(arrays["latent_shape"]) == {"conv": (64, 2, 2), "mlp2": (2,)}[run]
    assert latents.shape == (40, {"conv": 256, "mlp2": 2}[run])
    assert labels.tolist() == [i % 10 for i in range(40)]

    loaded = open_run(ckpt)
    images, _ = loaded.datamodule.split("test")
    with torch.no_grad():
        expected = loaded.model.reconstruct(normalize(images)).numpy()
    per_image = ((expected - normalize(images).numpy()) ** 2).reshape(40, -1).mean(1)
    np.testing.assert_allclose(errors, per_image, rtol=1e-5)
    assert encoded["test/mse"] == pytest.approx(float(per_image.mean()), rel=1e-5)

    for source in ("latents-test.npz", "latents-test.csv"):
        run_task(root, "decode", f"ckpt_path={ckpt}", f"latents={exports / source}")
        with np.load(exports / f"decoded-{source.split('.')[0]}.npz", allow_pickle=False) as decoded:
            assert np.abs(decoded["images"] - expected).max() < 1e-5

    with (exports / "latents-test.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 40 and rows[3]["class"] == "3" and float(rows[3]["mse"]) == pytest.approx(errors[3])


def test_decode_without_latents_sweeps_two_axes_from_the_test_latents(runs):
    root, trained = runs
    # max_images limits pictures of decoded files, never the sweep's own grid
    run_task(root, "decode", f"ckpt_path={trained['mlp2']['last_checkpoint']}", "steps=5", "max_images=4")
    exports = root / "mlp2" / "exports"
    with np.load(exports / "decoded-sweep-z0-z1.npz", allow_pickle=False) as sweep:
        grid, images = sweep["latents"], sweep["images"]
    assert grid.shape == (25, 2) and images.shape == (25, 1, 28, 28)
    # z0 grows along each row, z1 shrinks down the rows (high at the top, as on a plot)
    assert np.all(np.diff(grid[:5, 0]) > 0) and np.all(grid[:5, 1] == grid[0, 1])
    assert np.all(np.diff(grid[::5, 1]) < 0) and np.all(grid[::5, 0] == grid[0, 0])
    # from the 2nd to the 98th percentile of the test latents on each axis
    run = aelab.load(root / "mlp2")
    test_z = run.encode(run.datamodule.split("test")[0]).numpy()
    low, high = np.percentile(test_z, [2, 98], axis=0)
    np.testing.assert_allclose(
        [grid[0, 0], grid[4, 0], grid[20, 1], grid[0, 1]], [low[0], high[0], low[1], high[1]], rtol=1e-5
    )
    from PIL import Image

    with Image.open(exports / "decoded-sweep-z0-z1.png") as png:
        assert png.size == (5 * 30 + 2, 5 * 30 + 2)
    # the same grid with the code values on its axes: z0's along the bottom, z1's up the side
    run_task(root, "decode", f"ckpt_path={trained['mlp2']['last_checkpoint']}", "steps=5", "figure_format=svg")
    svg = (exports / "decoded-sweep-z0-z1-axes.svg").read_text()
    assert ">z0<" in svg and ">z1<" in svg
    assert all(f">{value:.3g}<" in svg for value in [*grid[:5, 0], *grid[::5, 1]])


def test_latents_of_another_model_are_refused_with_one_line(tmp_path, runs):
    root, trained = runs
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, latents=np.zeros((4, 7), np.float32))
    result = run_cli(
        "decode.py", f"ckpt_path={trained['mlp2']['last_checkpoint']}", f"latents={wrong}", f"paths.log_dir={tmp_path}"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"aelab: error: latents={wrong} holds codes of 7 numbers, and this model's code has 2 numbers, "
        "shape (2,); pass latents written by src/encode.py for this checkpoint"
    )


def test_latents_of_the_same_size_but_another_shape_or_a_bad_file_are_refused(tmp_path, runs):
    root, trained = runs
    ckpt = f"ckpt_path={trained['mlp2']['last_checkpoint']}"
    reshaped = tmp_path / "reshaped.npz"
    np.savez(reshaped, latents=np.zeros((4, 2), np.float32), latent_shape=np.array([1, 2]))
    with pytest.raises(ConfigError, match=r"holds codes of shape \(1, 2\), and this model's code has 2 numbers"):
        run_task(root, "decode", ckpt, f"latents={reshaped}")
    header_only = tmp_path / "empty.csv"
    header_only.write_text("index,label,class,mse,z0,z1\n\n")
    with pytest.raises(ConfigError, match="cannot be read as latents: it has a header but no rows"):
        run_task(root, "decode", ckpt, f"latents={header_only}")
    infinite = tmp_path / "infinite.npy"
    np.save(infinite, np.array([[0.0, np.inf]], np.float32))
    with pytest.raises(ConfigError, match="holds NaN or infinite values"):
        run_task(root, "decode", ckpt, f"latents={infinite}")


@pytest.mark.extra("export")
def test_the_exported_onnx_files_give_pytorchs_outputs_in_onnxruntime(tmp_path, runs):
    import onnx
    import onnxruntime

    root, trained = runs
    ckpt = trained["conv"]["last_checkpoint"]
    result = run_cli("export.py", f"ckpt_path={ckpt}", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    exports = root / "conv" / "exports"
    assert f"exported encoder, decoder and autoencoder to {exports} (ONNX)" in result.stdout
    recorded = json.loads((exports / "export.json").read_text())
    assert max(recorded["max_abs_diff"].values()) < 1e-4

    loaded = open_run(ckpt)
    x = torch.rand(3, 1, 28, 28) * 2 - 1  # a batch size the export never saw
    with torch.no_grad():
        z = loaded.model.encode(x)
        expected = {"encoder": z, "decoder": loaded.model.decode(z), "autoencoder": loaded.model.reconstruct(x)}
    feeds = {"encoder": x, "decoder": z, "autoencoder": x}
    for name in ("encoder", "decoder", "autoencoder"):
        model = onnx.load(exports / f"{name}.onnx")
        metadata = {p.key: p.value for p in model.metadata_props}
        assert metadata["aelab.checkpoint"] == "last.ckpt"
        session = onnxruntime.InferenceSession(str(exports / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        (output,) = session.run(None, {session.get_inputs()[0].name: feeds[name].numpy()})
        assert output.shape == tuple(expected[name].shape)
        assert np.abs(output - expected[name].numpy()).max() < 1e-4, name
    assert metadata["aelab.input"].startswith("float32 images (N, 1, 28, 28) in [-1, 1]")


def test_aelab_load_opens_a_run_by_folder_or_file_and_takes_pixels_as_they_come(runs):
    root, trained = runs
    by_folder = aelab.load(root / "mlp2")
    by_file = aelab.load(trained["mlp2"]["best_checkpoint"])
    images, labels = by_folder.datamodule.split("test")
    z = by_folder.encode(images)  # uint8 pixels, straight from the split
    assert z.shape == (40, 2) and z.dtype == torch.float32
    assert torch.equal(by_folder.encode(normalize(images)), z)  # floats on the model's scale
    x = by_folder.decode(z)
    assert x.shape == (40, 1, 28, 28)
    torch.testing.assert_close(by_folder.reconstruct(images[:5]), x[:5], rtol=0, atol=1e-6)
    torch.testing.assert_close(by_file.encode(images), z)  # 2 epochs: the best is the last
    assert by_folder.latent_shape == (2,) and by_folder.path.name == "last.ckpt"
    with pytest.raises(CheckpointError, match="holds no checkpoints/last.ckpt; pass a run directory or a .ckpt file"):
        aelab.load(root / "data")
    with pytest.raises(TypeError, match="images must be uint8 pixels or floats in \\[-1, 1\\], not torch.int64"):
        by_folder.encode(labels)
