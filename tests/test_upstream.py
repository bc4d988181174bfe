"""The private APIs aelab.upstream uses are still there: after an upgrade that removes one, this
fails first, naming the function to rewrite, before the behaviour tests fail in a roundabout way."""

import inspect

import hydra
import lightning as L
import pytest

from aelab import upstream


def test_every_private_use_is_in_aelab_upstream():
    from test_architecture import PACKAGE

    outside = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "upstream.py"
        for needle in ("_internal", "_on_before_step", "_batches_that_stepped", "_get_file_writer", "_warned_")
        if needle in path.read_text()
    ]
    assert outside == []
    uses = [name for name, f in vars(upstream).items() if inspect.isfunction(f) and f.__module__ == upstream.__name__]
    assert len(uses) <= 3, uses


def test_lightning_still_counts_optimiser_steps_where_count_optimizer_steps_adds_them():
    import torch
    from lightning.pytorch.core.optimizer import LightningOptimizer

    optimizer = LightningOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    for name in ("_on_before_step", "_on_after_step"):
        assert callable(getattr(optimizer, name, None)), (
            f"Lightning {L.__version__} has no LightningOptimizer.{name}: rewrite aelab.upstream.count_optimizer_steps"
        )


def test_lightning_still_keeps_the_loggers_step_where_count_logged_batches_adds_to_it():
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert isinstance(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", None), int), (
        f"Lightning {L.__version__} keeps no fit_loop.epoch_loop._batches_that_stepped: rewrite "
        "aelab.upstream.count_logged_batches"
    )
    upstream.count_logged_batches(trainer, 5)
    assert trainer.fit_loop.epoch_loop._batches_that_stepped == 5


def test_hydra_still_reports_through_run_and_report():
    import hydra._internal.utils as hydra_utils

    assert callable(getattr(hydra_utils, "run_and_report", None)), (
        f"Hydra {hydra.__version__} has no hydra._internal.utils.run_and_report: rewrite "
        "aelab.upstream.hydra_errors_reported_by"
    )
    # hydra.main reaches it through the module attribute, which the swap replaces
    assert "run_and_report(" in inspect.getsource(hydra_utils._run_hydra)
    seen = []
    with upstream.hydra_errors_reported_by(lambda func: seen.append(func)) as hydra_report:
        hydra_utils.run_and_report(print)
    assert seen == [print] and hydra_utils.run_and_report is hydra_report


@pytest.mark.parametrize("needle", ["_get_file_writer", "_warned_capturable"])
def test_what_was_private_is_now_done_publicly(needle):
    from test_architecture import PACKAGE

    assert not any(needle in path.read_text() for path in PACKAGE.rglob("*.py"))
