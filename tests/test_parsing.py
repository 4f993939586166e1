"""The output-format contract (docs/design.md, "Output format"): text -> steps, answer,
well_formed."""

import pytest

from srmcr.parsing import MAX_STEPS, parse, split_steps

TWENTY = "".join(f"Step {k}: I count object number {k}.\n" for k in range(1, 21))
CAPPED = tuple(f"I count object number {k}." for k in range(1, 16)) + (
    " ".join(f"I count object number {k}." for k in range(16, 21)),)

# (completion, steps, answer, well_formed, reason)
CASES = [
    ("<think>Step 1: I see two red circles.\nStep 2: I see one blue circle.</think>"
     "<answer>3</answer>",
     ("I see two red circles.", "I see one blue circle."), "3", True, "well-formed"),
    ("  <think>step 1) I see three circles.\nSTEP 2. They are all red.</think>\n"
     "<answer> 3 </answer>\n",
     ("I see three circles.", "They are all red."), "3", True,
     "marker variants, outer whitespace allowed, answer stripped"),
    ("<think>Step 1: there are three circles.</think><answer>3</answer><answer>4</answer>",
     ("there are three circles.",), "3", False,
     "two answer blocks: first answer, not well-formed"),
    ("<answer>3</answer><think>Step 1: there are three circles.</think>",
     ("there are three circles.",), "3", False, "answer before think"),
    ("I count the red circles carefully. There are three.<answer>3</answer>",
     ("I count the red circles carefully.", "There are three."), "3", False,
     "no think block: reasoning is the text before <answer>"),
    ("<think>unclosed think Step 1: I count three circles.<answer>3</answer>",
     ("unclosed think", "I count three circles."), "3", False,
     "unclosed think: text before <answer>, stray tag dropped, leading fragment kept"),
    ("There are three red circles in the image.",
     ("There are three red circles in the image.",), None, False,
     "no tags at all: all reasoning"),
    ("<think>Step 1: I count three circles.</think>",
     ("I count three circles.",), None, False, "think without answer"),
    ("<think>Step 1: a b c</think><answer>x</answer> trailing text",
     ("a b c",), "x", False, "text after the answer block"),
    ("<think>I look at the image.\nI count three circles.</think><answer>3</answer>",
     ("I look at the image.", "I count three circles."), "3", True,
     "newline steps without markers"),
    ("<think>The image shows circles. Two of them are red! Is the third blue? Yes it is.</think>"
     "<answer>yes</answer>",
     ("The image shows circles.", "Two of them are red!", "Is the third blue?", "Yes it is."),
     "yes", True, "one line: sentence split on . ! ?"),
    ("<think>Step 1: I count the circles.\nStep 2: three.\nStep 3: so the answer is three.</think>"
     "<answer>3</answer>",
     ("I count the circles. three.", "so the answer is three."), "3", True,
     "fragment under 3 words merged into the previous step"),
    ("<think>Hmm.\nI count three red circles.</think><answer>3</answer>",
     ("Hmm.", "I count three red circles."), "3", True,
     "leading fragment has no previous step: kept"),
    ("<think>Step 1:\nStep 2: I count three circles.</think><answer>3</answer>",
     ("I count three circles.",), "3", True, "empty step: the next marker is still a marker"),
    (f"<think>{TWENTY}</think><answer>20</answer>", CAPPED, "20", True,
     "20 steps capped at 16: the tail joins the last step"),
    ("<think>Step 1: I see <think> three circles.</think><answer>3</answer>",
     ("I see three circles.",), "3", False,
     "tag inside a step removed; nested tag not well-formed"),
    ("<think>Step 1: I see three </answer> red circles.\nStep 2: so three.</think>"
     "<answer>3</answer>",
     ("I see three red circles. so three.",), "3", False,
     "stray closing tag inside a step removed"),
    ("<think> </think><answer>3</answer>", (), "3", True, "empty reasoning: no steps"),
    ("", (), None, False, "empty string"),
    ("<think>Step 1: I count three circles.</think><answer></answer>",
     ("I count three circles.",), None, False,
     "empty answer block: no answer and not well-formed (it must not keep a format bonus)"),
    ("<think>Step 1: I count three circles.</think><answer>  </answer>",
     ("I count three circles.",), None, False, "blank answer block: same as empty"),
    ("<think>Step 1: il y a trois cercles — très nets ✓\nStep 2: ils sont tous rouges 🔴</think>"
     "<answer>trois ✓</answer>",
     ("il y a trois cercles — très nets ✓", "ils sont tous rouges 🔴"), "trois ✓", True,
     "unicode"),
]


@pytest.mark.parametrize(("text", "steps", "answer", "well_formed", "reason"), CASES,
                         ids=[c[4] for c in CASES])
def test_parse(text, steps, answer, well_formed, reason):
    parsed = parse(text)
    assert parsed.steps == steps
    assert parsed.answer == answer
    assert parsed.well_formed is well_formed
    assert parsed.reasoning == " ".join(steps)  # markers and tags removed, whitespace collapsed


def test_steps_never_keep_markers_or_tags():
    for text, *_ in CASES:
        for step in parse(text).steps:
            assert "<think>" not in step and "</answer>" not in step, text
            assert not step.lower().startswith("step "), text


def test_cap_is_max_steps():
    assert MAX_STEPS == 16
    assert len(split_steps(TWENTY)) == 16
    assert len(split_steps("".join(f"Step {k}: I count object {k}.\n" for k in range(1, 17)))) == 16


def test_split_steps_precedence():
    # Markers beat newlines, newlines beat sentences.
    assert split_steps("Step 1: one two three. four five six.\nseven eight nine") == [
        "one two three. four five six. seven eight nine"]
    assert split_steps("one two three. four five six.\nseven eight nine") == [
        "one two three. four five six.", "seven eight nine"]
    assert split_steps("one two three. four five six. seven eight nine") == [
        "one two three.", "four five six.", "seven eight nine"]
    assert split_steps("   \n  ") == []
