"""On a CUDA GPU, the fast path's CUDA graphs against Lightning's plain loop: the same training to
float32 tolerance, the one log line naming each loop, and a checkpoint of either resuming on the
other. ``make gpu-check`` runs these and then ``scripts/benchmark.py --device cuda``. Where torch
finds no CUDA (every CI machine) they are skipped, with that reason; the same bookkeeping is checked
bit for bit on the CPU in tests/test_train.py, a replay standing in for the graph."""

import pytest
import torch

from aelab.names import TRAIN_MSE, VAL_MSE
from aelab.tasks.train import train

from conftest import compose_train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch finds no CUDA GPU")

GPU = ["trainer=gpu", "data.batch_size=32", "seed=3"]  # 96 training images: 3 batches an epoch


def train_on_gpu(tmp_path, data, name, *overrides):
    cfg = compose_train(tmp_path, data, [*GPU, *overrides])
    cfg.paths.output_dir = str(tmp_path / name)
    return train(cfg)


def test_graphs_train_as_the_plain_loop_and_each_resumes_on_the_other(tmp_path, tiny_mnist, caplog):
    caplog.set_level("INFO", logger="aelab")
    graph = train_on_gpu(tmp_path, tiny_mnist, "graph", "trainer.max_epochs=3", "fast.enabled=true")
    assert "training loop: the fast path on cuda:0, 3 batches per training_step call, replayed as CUDA graphs" in (
        caplog.text
    )
    plain = train_on_gpu(tmp_path, tiny_mnist, "plain", "trainer.max_epochs=3", "fast.enabled=false")
    assert "training loop: Lightning's plain loop on cuda:0 (not the fast path: fast.enabled=false)" in caplog.text
    for key in (TRAIN_MSE, VAL_MSE):
        assert graph[key] == pytest.approx(plain[key], rel=1e-4), key
    weights = [torch.load(run["last_checkpoint"], weights_only=True)["state_dict"] for run in (graph, plain)]
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], rtol=1e-4, atol=1e-5, msg=name)

    resumed = {}
    for name, run, loop in (("graph-on-plain", graph, "false"), ("plain-on-graph", plain, "true")):
        resumed[name] = train_on_gpu(
            tmp_path,
            tiny_mnist,
            name,
            "trainer.max_epochs=4",
            f"fast.enabled={loop}",
            f"ckpt_path={run['last_checkpoint']}",
        )
        assert resumed[name]["epochs"] == 4
    assert resumed["graph-on-plain"][VAL_MSE] == pytest.approx(resumed["plain-on-graph"][VAL_MSE], rel=1e-4)


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_an_official_size_epoch_as_one_graph_trains(tmp_path, tiny_mnist, model, caplog):
    """The default on a GPU: fast.steps_per_call=auto is the whole epoch, one graph."""
    caplog.set_level("INFO", logger="aelab")
    summary = train_on_gpu(tmp_path, tiny_mnist, model, f"model={model}", "trainer.max_epochs=2")
    assert "replayed as CUDA graphs" in caplog.text
    assert summary["epochs"] == 2 and 0 < summary[VAL_MSE] < 1
