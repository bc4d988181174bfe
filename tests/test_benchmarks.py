"""The benchmark scripts run: their numbers are measured on the official split by hand
(docs/benchmarks.md), never timed here, but a script that no longer runs would go unnoticed until
a session with a GPU tried ``make gpu-check``."""

import json

import pytest

from conftest import make_tiny_dataset, run_cli


@pytest.mark.slow
def test_benchmark_times_every_cpu_variant_and_the_fast_path_trains_the_plain_loops_weights(tmp_path):
    data = make_tiny_dataset(tmp_path / "data")
    report = tmp_path / "bench.json"
    result = run_cli(
        "scripts/benchmark.py",
        *("--models", "mlp", "conv", "--variants", "a", "b", "c", "p", "--epochs", "1", "--rounds", "2"),
        *("--device", "cpu"),
        *("--data-dir", str(data), "--json", str(report)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(report.read_text())
    assert results["device"] == "cpu" and results["epochs_timed"] == 1 and results["rounds"] == 2
    for model in ("mlp", "conv"):
        row = results["models"][model]
        for variant in "abcp":
            rounds = row[variant]["epoch_times_s"]
            assert [len(times) for times in rounds] == [2, 2]  # in each round one warm-up, one timed
            assert round(row[variant]["s_per_epoch"], 4) == min(rounds[0][1], rounds[1][1])
        assert row["c_over_b"] == row["c"]["s_per_epoch"] / row["b"]["s_per_epoch"]
        assert row["a_over_c"] == row["a"]["s_per_epoch"] / row["c"]["s_per_epoch"]
        # round by round: each round's own timed epochs, divided
        for over in ("c", "p"):
            over_rounds, b_rounds = row[over]["epoch_times_s"], row["b"]["epoch_times_s"]
            by_round = [round(o[1] / b[1], 3) for o, b in zip(over_rounds, b_rounds, strict=True)]
            assert row[f"{over}_over_b_by_round"] == by_round
            shown = f"{by_round[0]:.2f} {by_round[1]:.2f} (median {(by_round[0] + by_round[1]) / 2:.2f})"
            assert f"{model} ({over})/(b) round by round: {shown}" in result.stdout
        # the fast path and Lightning's plain loop train the same weights, bit for bit
        assert row["c"]["val_mse"] == row["p"]["val_mse"]
        (line,) = [line for line in result.stdout.splitlines() if line.startswith(f"{model:6} ")]  # the table's row
        assert f"{row['c_over_b']:.2f}" in line.split()
