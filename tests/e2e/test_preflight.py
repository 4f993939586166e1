"""``main.py preflight``: one sampled validation pass, a report and a verdict, nothing trained."""

import pytest
import torch

from main import main
from tests.e2e.test_main import FAST, ROOT

ARGS = ["preflight", "-c", str(ROOT / "configs/tiny.yaml"), *FAST,
        "--data.val=shapes:val?n=4&size=56", "--model.sampling.val_group_size=3"]


def test_preflight_prints_the_report_and_saves_the_signals(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli = main([*ARGS, "--save", str(tmp_path / "signals.pt")])
    out = capsys.readouterr().out
    assert "questions: 4 labelled, G = 3 samples each" in out
    for line in ("greedy accuracy:", "mean@3 (sampled):", "maj@3 (majority):", "reward ",
                 "semantic_alignment ", "answer_support ", "self_certainty ", "well_formed "):
        assert line in out, line
    # The random tiny model never answers: no group mixes right and wrong, nothing to rank,
    # and neither its majority nor its greedy answer is ever right.
    assert "maj@3 - greedy:   +0.000  [+0.000, +0.000] over 4 paired questions" in out
    assert ("\nNO-GO: the reward's best-of-3 against greedy is +0.0 points (95% interval "
            "[+0.0, +0.0])") in out
    saved = torch.load(tmp_path / "signals.pt", weights_only=False)
    assert saved["summary"]["questions"] == 4 and len(saved["batches"]) == 2
    assert saved["summary"]["headroom"].questions == 4
    assert saved["summary"]["margins"]["reward"].questions == 4
    assert cli.trainer.global_step == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signals.pt"]  # nothing else written


@pytest.mark.parametrize("extra, message", [
    (["--data.val=null"], "error: preflight needs labelled validation data"),
    (["--model.sampling.val_group_size=0"], "error: preflight samples G completions"),
], ids=["no val data", "sampling off"])
def test_preflight_without_what_it_needs_says_so_in_one_line(tmp_path, monkeypatch, capsys,
                                                             extra, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        main([*ARGS, *extra])
    assert done.value.code == 1
    assert capsys.readouterr().err.rstrip().splitlines()[-1].startswith(message)
