"""Score completions with the text cues, to debug a reward without a model or a GPU.

    python -m tools.score --question "How many circles?" \\
        --completion "<think>Step 1: I count the circles.</think><answer>3</answer>"
    python -m tools.score --jsonl predictions.jsonl     # lines with "question", "completion"
    python -m tools.score --jsonl runs.jsonl --json     # one JSON object per line instead

Prints the parsed steps and answer, well-formedness and the format gate (a completion without a
usable answer ranks below every well-formed one of its group), each text cue's raw score in [0, 1] ("abstains"
where a cue does not apply) and, given a reference (``--answer`` or an ``answer`` field), whether
the answer matches it. Visual grounding is not scored: it needs the policy model and the image
(``python main.py predict`` writes it).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from srmcr.answers import is_correct
from srmcr.cues import CUE_NAMES, CUES
from srmcr.encoder import TextEncoder
from srmcr.parsing import parse

# The SR-MCR cues that need only text (their score takes no input beside the rollout): name ->
# the pure function on top of the cue's file, named like the cue: fn(questions, completions,
# encoder). The recipe cues (answer agreement over a group, the policy-asking ones) are not here.
TEXT_CUES = {name: getattr(sys.modules[CUES[name].__module__], name) for name in CUE_NAMES
             if not CUES[name].needs}
IMAGE_CUES = [name for name in CUE_NAMES if name not in TEXT_CUES]
NOTE = (f"not scored here: {', '.join(IMAGE_CUES)} (needs the policy model and the image; "
        f"`python main.py predict` writes it)")


def score_completions(questions: Sequence[str], completions: Sequence[str],
                      answers: Sequence[str | None] | None = None,
                      encoder: TextEncoder | None = None) -> list[dict[str, Any]]:
    """One row per completion: parsed steps and answer, well_formed, text cue scores (None =
    abstain) and, where a reference answer is given, ``correct``."""
    encoder = encoder or TextEncoder()
    columns = {name: fn(questions, completions, encoder).tolist()
               for name, fn in TEXT_CUES.items()}
    rows = []
    for i, (question, completion) in enumerate(zip(questions, completions, strict=True)):
        parsed = parse(completion)
        reference = answers[i] if answers is not None else None
        rows.append({"question": question, "completion": completion, "steps": list(parsed.steps),
                     "parsed_answer": parsed.answer, "well_formed": parsed.well_formed,
                     "answer": reference,
                     "correct": None if reference is None else is_correct(parsed.answer, reference),
                     "scores": {n: None if math.isnan(c[i]) else c[i] for n, c in columns.items()}})
    return rows


def format_row(row: dict[str, Any]) -> str:
    """Human-readable report of one ``score_completions`` row."""
    lines = [f"question:      {row['question']}",
             f"well formed:   {'yes' if row['well_formed'] else 'no'}",
             f"steps ({len(row['steps'])}):"]
    lines += [f"  {k}. {step}" for k, step in enumerate(row["steps"], start=1)] or ["  (none)"]
    lines.append(f"answer:        {row['parsed_answer']!r}" + (
        "" if row["answer"] is None else
        f"  (reference {row['answer']!r}: {'correct' if row['correct'] else 'wrong'})"))
    lines.append("format gate:   " + (
        "passes (well-formed, with an answer)" if row["well_formed"] else
        "GATED: no usable answer (none, empty, or outside one <think> + one <answer> block); "
        "it ranks below every well-formed completion of its group"))
    lines.append("text cues:")
    width = max(map(len, row["scores"]), default=0)
    lines += [f"  {name:<{width}}  {'abstains' if s is None else f'{s:.4f}'}"
              for name, s in row["scores"].items()]
    lines.append(f"  {NOTE}")
    return "\n".join(lines)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not all(
                    isinstance(row.get(k), str) for k in ("question", "completion")):
                raise SystemExit(f"{path}:{lineno}: need string fields 'question' and "
                                 f"'completion'")
            yield row


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.score",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--question", help="the question the completion answers")
    parser.add_argument("--completion", help="the model's output, tags included")
    parser.add_argument("--answer", help="optional reference answer, to check the parsed answer")
    parser.add_argument("--jsonl", type=Path, help="a JSONL file with 'question' and "
                        "'completion' fields (and an optional 'answer'); e.g. predictions.jsonl")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--encoder", help="sentence-transformers folder for E(x) (default: the "
                        "packaged all-MiniLM-L6-v2)")
    args = parser.parse_args(argv)
    # Loading the encoder imports bitsandbytes and transformers: keep their chatter off stderr.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.jsonl is not None:
        records = list(_read_jsonl(args.jsonl))
    elif args.question is not None and args.completion is not None:
        records = [{"question": args.question, "completion": args.completion,
                    "answer": args.answer}]
    else:
        parser.error("give --question and --completion, or --jsonl FILE")
    rows = score_completions([r["question"] for r in records], [r["completion"] for r in records],
                             [r.get("answer") for r in records], TextEncoder(args.encoder))
    for i, row in enumerate(rows):
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(("\n" if i else "") + format_row(row))


if __name__ == "__main__":
    main(sys.argv[1:])
