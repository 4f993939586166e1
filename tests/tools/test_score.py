"""``python -m tools.score``: text cue scores and parsing of completions, without a model."""

import json
import math

import pytest

from tests.cues.fakes import HashingEncoder
from tools.score import IMAGE_CUES, TEXT_CUES, main, score_completions

GOOD = ("<think>Step 1: I see two red circles and one blue circle.\n"
        "Step 2: So there are three circles in total.</think><answer>3</answer>")


def test_text_cues_are_every_cue_but_visual_grounding():
    assert set(TEXT_CUES) == {"semantic_alignment", "lexical_fidelity", "non_redundancy",
                              "step_consistency"}
    assert IMAGE_CUES == ["visual_grounding"]


def test_rows_match_the_functional_cues():
    questions, completions = ["How many circles are there?"] * 2, [GOOD, "no tags at all"]
    rows = score_completions(questions, completions, ["three", None], HashingEncoder())
    expected = {n: fn(questions, completions, HashingEncoder()).tolist()
                for n, fn in TEXT_CUES.items()}
    assert rows[0]["steps"] == ["I see two red circles and one blue circle.",
                                "So there are three circles in total."]
    assert (rows[0]["parsed_answer"], rows[0]["well_formed"], rows[0]["correct"]) == ("3", True,
                                                                                     True)
    assert (rows[1]["parsed_answer"], rows[1]["well_formed"], rows[1]["correct"]) == (None, False,
                                                                                     None)
    for i, row in enumerate(rows):
        for name, score in row["scores"].items():
            want = expected[name][i]
            assert score is None if math.isnan(want) else score == pytest.approx(want)
    assert rows[1]["scores"]["step_consistency"] is None  # one step: abstains (NaN -> None)


def test_cli_prints_steps_answer_scores_and_the_grounding_note(capsys):
    main(["--question", "How many circles are there?", "--completion", GOOD, "--answer", "3"])
    out = capsys.readouterr().out
    for text in ["steps (2):", "1. I see two red circles", "answer:        '3'", "correct",
                 *TEXT_CUES, "visual_grounding (needs the policy model and the image",
                 "format gate:   passes"]:
        assert text in out
    main(["--question", "How many circles are there?", "--completion",
          GOOD.split("<answer>")[0] + "<answer></answer>"])
    assert "format gate:   GATED: no usable answer" in capsys.readouterr().out


def test_cli_reads_jsonl_and_writes_json(tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Is there a cat?", "completion": "<think>I look.</think><answer>yes</answer>",
         "answer": "no"},
        {"question": "What colour?", "completion": GOOD}]) + "\n")
    main(["--jsonl", str(path), "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["correct"] for r in rows] == [False, None]
    assert all(set(r["scores"]) == set(TEXT_CUES) for r in rows)


def test_cli_needs_input_and_names_bad_lines(tmp_path):
    with pytest.raises(SystemExit):
        main(["--question", "only a question"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(SystemExit, match="bad.jsonl:1"):
        main(["--jsonl", str(bad)])
