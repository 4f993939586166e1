"""A record that makes sampling raise is found, replaced by the batch's others and counted; with
none left the step is skipped like a non-finite one; a failure no record causes alone is raised."""

import logging

import lightning as L
import pytest
import torch

import srmcr.module
from callbacks.cooling import ConfidenceCooling
from srmcr.record_faults import failing_records, refill, sample_skipping
from tests.test_module import Outputs, _fit, _module


@pytest.mark.parametrize(("rows", "bad", "refilled"), [
    ([0, 1, 2, 3], set(), [0, 1, 2, 3]),  # nothing to replace
    ([0, 1, 2, 3], {1}, [0, 0, 2, 3]),  # the first good one fills in
    ([0, 1, 2, 3], {0, 2}, [1, 1, 3, 3]),  # the good ones in turn
    ([0, 1, 2], {0, 1}, [2, 2, 2]),  # one good one fills every gap
    ([0, 1], {0, 1}, None),  # none left
])
def test_refill_keeps_the_batch_size(rows, bad, refilled):
    assert refill(rows, bad) == refilled


def test_failing_records_names_each_error_in_one_line():
    def try_one(row):
        if row == 1:
            raise ValueError("Image features and image tokens do not match\nmore detail")
    assert failing_records(try_one, [0, 1, 2]) == {
        1: "ValueError: Image features and image tokens do not match"}


def test_a_failure_no_record_causes_alone_is_raised():
    def sample_rows(rows, probe):
        if len(rows) > 1:  # e.g. out of memory for the whole batch only
            raise RuntimeError("out of memory")
        return rows
    with pytest.raises(RuntimeError, match="out of memory"):
        sample_skipping(sample_rows, ["a", "b"], step=0)


class FailingRecords:
    """``srmcr.module.sample`` that raises, as a processor refusing a record would, whenever one of
    the records ``fail(ids)`` picks is in the batch. The pick: the records of the first batch it
    sees that ``choose`` selects."""

    def __init__(self, monkeypatch, choose=lambda ids: ids[1:]) -> None:
        self.sample, self.choose = srmcr.module.sample, choose
        self.bad: set[str] | None = None
        self.picked: list[list[str]] = []  # the records picked, in batch order, at each pick
        monkeypatch.setattr(srmcr.module, "sample", self)

    def __call__(self, model, processor, images, questions, *args, ids, **kwargs):
        if self.bad is None:
            self.picked.append(self.choose(list(ids)))
            self.bad = set(self.picked[-1])
        if self.bad & set(ids):
            raise ValueError(f"the processor refuses {sorted(self.bad & set(ids))}")
        return self.sample(model, processor, images, questions, *args, ids=ids, **kwargs)


def test_a_failing_record_is_replaced_counted_and_named(tmp_path, monkeypatch, caplog):
    injected = FailingRecords(monkeypatch)
    module = _module(beta=0.0)
    with caplog.at_level(logging.WARNING, logger="srmcr.record_faults"):
        trainer = _fit(module, 2, tmp_path)
    [bad] = injected.bad
    assert trainer.global_step == 2 and module.guard.skipped == 0
    assert module.skipped_records == {"unprocessable": 1}
    assert float(trainer.callback_metrics["data/skipped/unprocessable"]) == 1.0
    assert [r.getMessage() for r in caplog.records] == [
        f"warning: step 1: record {bad} skipped, sampling fails on it (ValueError: the processor "
        f"refuses ['{bad}']); 1 of the batch's 2 records left"]


def test_a_batch_without_a_good_record_is_skipped_without_losing_state(tmp_path, monkeypatch):
    FailingRecords(monkeypatch, choose=lambda ids: ids)  # the whole first batch
    module = _module(beta=0.0)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    outputs = Outputs()

    class Untouched(L.Callback):  # the weights right after step 1
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 1:
                assert all(torch.equal(p, before[n]) for n, p in
                           pl_module.model.named_parameters())
    cooling = ConfidenceCooling()  # in every shipped config: it copes with a step without data
    trainer = _fit(module, 2, tmp_path, callbacks=[outputs, Untouched(), cooling])
    assert trainer.global_step == 2 and module.guard.skipped == 1 and module.guard.consecutive == 0
    assert cooling.auto_count == 1  # only step 2 had completions to observe
    assert module.skipped_records == {"unprocessable": 2}
    assert "step" not in outputs.seen[0] and "step" in outputs.seen[1]  # step 2 trained
