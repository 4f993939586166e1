"""Warm-up traces: deterministic, well-formed, short; clean ones correct and grounded; each flaw
shows and comes in its set share."""

import re
from collections import Counter
from functools import cache

import pytest

from srmcr.answers import is_correct
from srmcr.parsing import parse
from toyworld import tiny
from toyworld.scene import COLOURS, KINDS
from toyworld.shapes_questions import TEMPLATES
from toyworld.traces import (
    TraceBatch,
    TraceDataModule,
    TraceMix,
    main,
    make_trace,
    render_trace,
)

N = 600
# A shape named positively: "red circle", not "no red circle" (a denial names what is absent).
_NAMED = re.compile(rf"(?<!no )\b({'|'.join(COLOURS)}) ({'|'.join(KINDS)})s?\b")
_STEP = re.compile(r"Step \d+: (.*)")


@cache
def traces(seed: int = 0, split: str = "warmup", n: int = N, mix: TraceMix | None = None):
    return [make_trace(seed, split, i, mix) for i in range(n)]


def steps(text: str) -> list[str]:
    return _STEP.findall(text.split("</think>")[0])


def named(step: str) -> set[tuple[str, str]]:
    return set(_NAMED.findall(step))


def states(step: str, answer: str) -> bool:
    """Whether a conclusion step says ``answer``: "there are 2 circles" says 2, "there are no
    circles" 0, "there is no red circle" no, "there is a red circle" yes."""
    words = step.split()
    spoken = {"0": {"no"}, "no": {"no"}, "yes": {"a", "an"}}.get(answer, set())
    return answer in words or words[2] in spoken


def test_traces_are_a_pure_function_of_seed_split_index():
    assert [t.text for _, t in traces()[:50]] == [make_trace(0, "warmup", i)[1].text
                                                   for i in range(50)]
    assert [t.text for _, t in traces()[:50]] != [t.text for _, t in traces(1)[:50]]
    assert [t.text for _, t in traces()[:50]] != [t.text for _, t in traces(0, "val", 50)]


def test_every_trace_is_well_formed_and_parses_to_its_steps_and_answer():
    for record, trace in traces():
        p = parse(trace.text)
        assert p.well_formed, trace.text
        assert p.answer == trace.answer
        # Every step has >= 3 words, so the parser keeps the trace's steps as they are.
        assert list(p.steps) == steps(trace.text), trace.text
        assert trace.correct == is_correct(trace.answer, record.answer)


def test_every_template_gets_traces():
    assert {record.template for record, _ in traces()} == set(TEMPLATES)


def test_clean_traces_are_correct_and_grounded():
    clean = [(r, t) for r, t in traces() if t.kind == "clean"]
    for record, trace in clean:
        assert trace.correct and trace.answer == record.answer, trace.text
        present = {(s.colour, s.kind) for s in record.scene.shapes}
        body = steps(trace.text)
        for step in body:
            assert named(step) <= present, (record.question, trace.text)
        assert len(set(body)) == len(body), trace.text  # nothing repeated
        assert states(body[-1], record.answer), trace.text  # the last step says the answer


def test_clean_traces_place_shapes_where_they_are():
    where = {"on the left": 0, "in the middle": 1, "on the right": 2}
    checked = 0
    for record, trace in traces():
        if trace.kind != "clean":
            continue
        for step in steps(trace.text):
            found = re.fullmatch(rf"(\w+) (\w+) ({'|'.join(where)})", step)
            if found:
                colour, kind, place = found.groups()
                assert any(s.colour == colour and s.kind == kind
                           and min(int(s.cx * 3), 2) == where[place]
                           for s in record.scene.shapes), (step, record.scene)
                checked += 1
    assert checked > 100


def test_flaw_kinds_and_wrong_answers_come_in_their_set_shares():
    mix = TraceMix()
    kinds = Counter(t.kind for _, t in traces())
    for kind in ("clean", "loop", "hallucination", "contradiction"):
        assert abs(kinds[kind] / N - mix.share(kind)) < 0.06, (kind, kinds)
    flawed = [t for _, t in traces() if t.kind != "clean"]
    assert abs(sum(not t.correct for t in flawed) / len(flawed) - mix.wrong_answer) < 0.1
    assert all(t.correct for _, t in traces() if t.kind == "clean")


@pytest.mark.parametrize(
    ("mix", "kinds", "wrong"),
    [
        (TraceMix(clean=1.0), {"clean"}, 0.0),  # no flaws at all
        (TraceMix(clean=0.0, flaws={"loop": 1.0}), {"loop"}, None),  # one flaw only
        (TraceMix(clean=0.0, flaws={"loop": 0.0, "hallucination": 1.0}), {"hallucination"}, None),
        (TraceMix(clean=0.0, wrong_answer=1.0), {"loop", "hallucination", "contradiction"}, 1.0),
        (TraceMix(clean=0.0, wrong_answer=0.0), {"loop", "hallucination", "contradiction"}, 0.0),
    ],
)
def test_mix_sets_the_kinds_and_wrong_answers(mix, kinds, wrong):
    made = [make_trace(0, "warmup", i, mix)[1] for i in range(120)]
    assert {t.kind for t in made} == kinds
    if wrong is not None:
        assert sum(not t.correct for t in made) / len(made) == wrong


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clean": 1.5}, r"mix.clean \(1.5\)"),
        ({"wrong_answer": -0.1}, r"mix.wrong_answer \(-0.1\)"),
        ({"flaws": {"typo": 1.0}}, r"unknown flaws \['typo'\]"),
        ({"clean": 0.5, "flaws": {"loop": 0.0}}, r"not all 0"),
    ],
)
def test_mix_rejects_impossible_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TraceMix(**kwargs)


def test_each_flaw_shows_in_its_traces():
    for record, trace in traces():
        body = steps(trace.text)[:-1]  # the facts and the flaw, without the conclusion
        present = {(s.colour, s.kind) for s in record.scene.shapes}
        if trace.kind == "loop":
            assert len(body) == 2 and body[0] == body[1], trace.text
        elif trace.kind == "hallucination":
            assert any(named(step) - present for step in body), (record.scene, trace.text)
        elif trace.kind == "contradiction":
            # A fact and its denial: "red circle on the left" / "there is no red circle",
            # "2 circles" / "no circles", "left of" / "right of", "a circle" / "a square".
            assert len(body) == 2 and body[0] != body[1], trace.text


def test_flawed_wrong_traces_state_their_wrong_answer():
    for record, trace in traces():
        if not trace.correct:
            assert not is_correct(trace.answer, record.answer)
            assert states(steps(trace.text)[-1], trace.answer), trace.text


def test_traces_fit_the_tiny_configs_completion_budget():
    # tiny.yaml samples at most 48 tokens (the end token included).
    tokenizer = tiny.build_tokenizer(tiny.SPECS["small"].vocab_size)
    made = traces()
    lengths = [len(tokenizer(t.text, add_special_tokens=False)["input_ids"]) + 1 for _, t in made]
    clean = [n for n, (_, t) in zip(lengths, made) if t.kind == "clean"]
    assert sum(n <= 48 for n in lengths) / len(lengths) > 0.85
    assert sum(n <= 48 for n in clean) / len(clean) > 0.9
    assert max(lengths) <= 64


def test_render_trace_is_the_system_prompts_format():
    text = render_trace(["red circle on the left", "there is 1 circle"], "1")
    assert text == ("<think>Step 1: red circle on the left\nStep 2: there is 1 circle</think>"
                    "<answer>1</answer>")


def test_datamodule_batches_hold_the_traces_in_record_order():
    dm = TraceDataModule(train="shapes:warmup?n=6&size=56", val=None, batch_size=4,
                         min_pixels=28 * 28, max_pixels=56 * 56)
    batches = list(dm.train_dataloader())
    assert [len(b) for b in batches] == [4, 2]
    first = batches[0]
    assert isinstance(first, TraceBatch)
    expected = [make_trace(0, "warmup", i, size=56) for i in range(4)]
    assert first.completions == [t.text for _, t in expected]
    assert first.questions == [r.question for r, _ in expected]
    assert first.answers == [r.answer for r, _ in expected]
    assert first.kinds == [t.kind for _, t in expected]
    assert all(im.size == (56, 56) for im in first.images)
    assert dm.val_dataloader() == []


def test_datamodule_rejects_bad_settings():
    with pytest.raises(ValueError, match="batch_size >= 1"):
        TraceDataModule(batch_size=0)
    with pytest.raises(ValueError, match="write the split"):
        TraceDataModule(train="shapes:")


def test_command_line_prints_traces(capsys):
    main(["--n", "3", "--split", "val"])
    out = capsys.readouterr().out
    assert out.count("<think>Step 1:") == 3 and "shapes-val-0-000002" in out
