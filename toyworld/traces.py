"""Reasoning traces for the supervised warm-up, written from a shapes record's scene.

The only place where the shapes world's labels teach the model: SR-MCR training never sees them.
A trace is exactly the system prompt's format, one terse fact of at least 3 words per step,

    <think>Step 1: red circle on the left
    Step 2: blue circle on the right
    Step 3: there are 2 circles</think><answer>2</answer>

and is clean (correct, every shape it names is in the scene) or carries one flaw: ``loop`` (a
step repeated verbatim), ``hallucination`` (a step names a shape that is not there) or
``contradiction`` (a step denies another). A flawed trace ends in a wrong answer, stated in its
last step, with probability ``TraceMix.wrong_answer``. Traces are short (the tiny tokenizer spends
~5 tokens on "Step k:" and ~12 on the tags): ~90% fit tiny.yaml's 48 completion tokens. Each is a
pure function of (seed, split, index), like the records it describes.

    python -m toyworld.traces --split warmup --n 8     # print a few
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from datamodules.records import fit_pixels
from srmcr.errors import ConfigError
from toyworld.scene import COLOURS, KINDS, Scene, Shape
from toyworld.shapes import ShapesRecord, make_record
from toyworld.sources import ShapesSource, TallySource, parse_shapes, parse_tally

Flaw = Literal["loop", "hallucination", "contradiction"]
Kind = Literal["clean", "loop", "hallucination", "contradiction"]
TRACE_VERSION = 1  # bump when the wording or the sampling changes (it keys the warm:<size> cache)
LOOP_REPEATS = 1  # a looping trace says its first fact 1 + LOOP_REPEATS times
MAX_FLAWED_STEPS = 2  # steps before the conclusion of a flawed trace (keeps it short)
MAX_PLACED = 2  # a count that lists more shapes names them without their place (shorter)


@dataclass
class TraceMix:
    """Which traces the warm-up sees: shares of clean and flawed ones, and how often flaws lie."""

    clean: float = 0.6
    """Share of clean traces (correct answer, grounded, no repeated or contradicting step)."""
    flaws: dict[str, float] = field(default_factory=lambda: {
        "loop": 1.0, "hallucination": 1.0, "contradiction": 1.0})
    """Relative weights of the flaws among the other traces (loop, hallucination, contradiction)."""
    wrong_answer: float = 0.5
    """Share of flawed traces whose final step and answer are wrong."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.flaws) - {"loop", "hallucination", "contradiction"})
        if unknown:
            raise ConfigError(f"mix.flaws: unknown flaws {unknown}; use loop, hallucination, "
                              "contradiction")
        if not 0 <= self.clean <= 1 or not 0 <= self.wrong_answer <= 1:
            raise ConfigError(f"mix.clean ({self.clean}) and mix.wrong_answer "
                              f"({self.wrong_answer}) must lie in [0, 1]")
        if any(w < 0 for w in self.flaws.values()) or (self.clean < 1 and
                                                       sum(self.flaws.values()) <= 0):
            raise ConfigError(f"mix.flaws {self.flaws}: weights must be >= 0 and not all 0 "
                              "unless mix.clean is 1")

    def share(self, kind: Kind) -> float:
        """Expected share of traces of this kind."""
        if kind == "clean":
            return self.clean
        total = sum(self.flaws.values())
        return (1 - self.clean) * self.flaws.get(kind, 0.0) / total if total else 0.0


@dataclass(frozen=True)
class Trace:
    text: str  # <think>Step 1: ...</think><answer>...</answer>
    answer: str  # the answer the trace gives (the record's answer unless ``correct`` is False)
    correct: bool
    kind: Kind


@dataclass(frozen=True)
class Fact:
    text: str  # "a red circle on the left"
    denial: str  # a step that contradicts it: "no red circle"


@dataclass(frozen=True)
class Plan:
    """What a clean trace says about one record, and how to state another (wrong) answer."""

    facts: list[Fact]
    conclude: Callable[[str], str]  # answer -> the last step ("2 circles")
    wrong: Callable[[random.Random], str]  # a wrong answer


# ---- wording -------------------------------------------------------------------------------
def _there_are(n: int, noun: str) -> str:
    return f"there is 1 {noun}" if n == 1 else f"there are {'no' if n == 0 else n} {noun}s"


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _where(shape: Shape) -> str:
    return ("on the left", "in the middle", "on the right")[min(int(shape.cx * 3), 2)]


def _seen(shape: Shape) -> Fact:
    return Fact(f"{shape.name} {_where(shape)}", f"there is no {shape.name}")


def _listing(shapes: Sequence[Shape], placed: bool = True) -> list[Fact]:
    """One fact per distinct description, left to right ("red circle on the left"; "a red
    circle" unplaced); alike shapes share one ("2 red circles on the left")."""
    alike: dict[str, list[Shape]] = {}
    for shape in sorted(shapes, key=lambda s: s.cx):
        key = f"{shape.name} {_where(shape)}" if placed else shape.name
        alike.setdefault(key, []).append(shape)
    facts = []
    for group in alike.values():
        name, where = group[0].name, f" {_where(group[0])}" if placed else ""
        if len(group) > 1:
            text = f"{len(group)} {name}s{where}"
        else:
            text = f"{name}{where}" if placed else _a(name)
        facts.append(Fact(text, f"there is no {name}"))
    return facts


def _other(rng: random.Random, options: Sequence[str], answer: str) -> str:
    return rng.choice([o for o in options if o != answer])


def _wrong_count(answer: str) -> Callable[[random.Random], str]:
    n = int(answer)
    return lambda rng: str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)


# ---- one plan per question template (toyworld.shapes_questions.TEMPLATES) --------------
_NAME = r"(\w+) (\w+)"
_QUESTION = {
    "count_kind": re.compile(r"How many (\w+)s are there\?"),
    "count_colour": re.compile(r"How many (\w+) shapes are there\?"),
    "count_total": re.compile(r"How many shapes are there in total\?()"),
    "colour_of_only": re.compile(r"What colour is the only (\w+)\?"),
    "exists": re.compile(rf"Is there a {_NAME}\?"),
    "left_right": re.compile(rf"Which is (further \w+), the {_NAME} or the {_NAME}\?"),
    "above_below": re.compile(rf"Which is (higher up|lower down), the {_NAME} or the {_NAME}\?"),
    "colour_of_largest": re.compile(r"What colour is the largest shape\?()"),
}


def _count(scene: Scene, answer: str, keep: Callable[[Shape], bool], noun: str) -> Plan:
    shown = [s for s in scene.shapes if keep(s)]
    # None to count: what is there instead (the conclusion says "there are no ...").
    facts = _listing(shown or scene.shapes[:1], placed=len(shown) <= MAX_PLACED)
    return Plan(facts, lambda a: _there_are(int(a), noun), _wrong_count(answer))


def _count_total(scene: Scene, answer: str) -> Plan:
    counts = {k: sum(s.kind == k for s in scene.shapes) for k in KINDS}
    facts = [Fact(_there_are(n, k), _there_are(0, k)) for k, n in counts.items() if n]
    return Plan(facts, lambda a: _there_are(int(a), "shape"), _wrong_count(answer))


def _colour_of_only(scene: Scene, kind: str, answer: str) -> Plan:
    shape = next(s for s in scene.shapes if s.kind == kind)
    return Plan([_seen(shape)], lambda a: f"the {kind} is {a}",
                lambda rng: _other(rng, sorted(COLOURS), answer))


def _exists(scene: Scene, colour: str, kind: str, answer: str) -> Plan:
    if answer == "yes":
        shape = next(s for s in scene.shapes if s.colour == colour and s.kind == kind)
        facts = [_seen(shape)]
    else:  # the shapes of that kind are what one checks: other colours, or none at all
        facts = _listing([s for s in scene.shapes if s.kind == kind])[:2]
        facts = facts or [Fact(_there_are(0, kind), f"there is {_a(kind)}")]
    name = f"{colour} {kind}"
    return Plan(facts, lambda a: f"there is {_a(name)}" if a == "yes" else f"there is no {name}",
                lambda rng: "no" if answer == "yes" else "yes")


def _position(scene: Scene, word: str, a: str, b: str, answer: str) -> Plan:
    first, second = (next(s for s in scene.shapes if s.name == n) for n in (a, b))
    if word.startswith("further"):
        is_, not_ = ("left of", "right of") if first.cx < second.cx else ("right of", "left of")
    else:
        is_, not_ = ("above", "below") if first.cy < second.cy else ("below", "above")
    fact = Fact(f"{a} is {is_} {b}", f"{a} is {not_} {b}")
    kinds = (first.kind, second.kind)
    return Plan([fact], lambda k: f"the {k} is {word}", lambda rng: _other(rng, kinds, answer))


def _colour_of_largest(scene: Scene, answer: str) -> Plan:
    largest = max(scene.shapes, key=lambda s: s.area)
    other = next(k for k in KINDS if k != largest.kind)
    fact = Fact(f"the largest shape is {_a(largest.kind)}", f"the largest shape is {_a(other)}")
    return Plan([fact], lambda c: f"the {largest.kind} is {c}",
                lambda rng: _other(rng, sorted(COLOURS), answer))


Planner = Callable[[Scene, tuple[str, ...], str], Plan]  # (scene, question's words, answer)
PLANNERS: dict[str, Planner] = {
    "count_kind": lambda scene, w, answer: _count(scene, answer, lambda s: s.kind == w[0], w[0]),
    "count_colour": lambda scene, w, answer: _count(scene, answer, lambda s: s.colour == w[0],
                                                    f"{w[0]} shape"),
    "count_total": lambda scene, w, answer: _count_total(scene, answer),
    "colour_of_only": lambda scene, w, answer: _colour_of_only(scene, w[0], answer),
    "exists": lambda scene, w, answer: _exists(scene, w[0], w[1], answer),
    "left_right": lambda scene, w, answer: _position(scene, w[0], f"{w[1]} {w[2]}",
                                                     f"{w[3]} {w[4]}", answer),
    "above_below": lambda scene, w, answer: _position(scene, w[0], f"{w[1]} {w[2]}",
                                                      f"{w[3]} {w[4]}", answer),
    "colour_of_largest": lambda scene, w, answer: _colour_of_largest(scene, answer),
}


def plan(record: ShapesRecord) -> Plan:
    """The clean reasoning for ``record``: facts read off its scene, and its conclusion."""
    found = _QUESTION[record.template].fullmatch(record.question)
    if found is None:
        raise ValueError(f"{record.id}: question {record.question!r} does not match its "
                         f"template {record.template!r}")
    return PLANNERS[record.template](record.scene, found.groups(), record.answer)


# ---- flaws: each rewrites the list of fact steps --------------------------------------------
def _loop(steps: list[str], scene: Scene, facts: list[Fact], rng: random.Random) -> list[str]:
    return [steps[0]] * (1 + LOOP_REPEATS)  # stuck on the first fact: no progress after it


def _hallucinate(steps: list[str], scene: Scene, facts: list[Fact],
                 rng: random.Random) -> list[str]:
    present = {(s.colour, s.kind) for s in scene.shapes}
    colour, kind = rng.choice([(c, k) for c in sorted(COLOURS) for k in KINDS
                               if (c, k) not in present])
    where = rng.choice(("on the left", "in the middle", "on the right"))
    at = rng.randint(0, len(steps))
    return [*steps[:at], f"{colour} {kind} {where}", *steps[at:]]


def _contradict(steps: list[str], scene: Scene, facts: list[Fact],
                rng: random.Random) -> list[str]:
    i = rng.randrange(len(facts))
    return [*steps[:i + 1], facts[i].denial, *steps[i + 1:]]


FLAWS: dict[Flaw, Callable[[list[str], Scene, list[Fact], random.Random], list[str]]] = {
    "loop": _loop, "hallucination": _hallucinate, "contradiction": _contradict,
}


def render_trace(steps: Sequence[str], answer: str) -> str:
    body = "\n".join(f"Step {i}: {step}" for i, step in enumerate(steps, start=1))
    return f"<think>{body}</think><answer>{answer}</answer>"


def write_trace(record: ShapesRecord, rng: random.Random, mix: TraceMix) -> Trace:
    """One trace for ``record``: clean or flawed as ``mix`` says, drawn from ``rng``."""
    p = plan(record)
    kind: Kind = "clean"
    if rng.random() >= mix.clean:
        names = sorted(mix.flaws)
        kind = rng.choices(names, weights=[mix.flaws[n] for n in names])[0]  # type: ignore
    steps = [f.text for f in p.facts]
    answer = record.answer
    if kind != "clean":  # the flaw adds a step: keep the facts before it to the first few
        facts = p.facts[:MAX_FLAWED_STEPS - 1]
        steps = FLAWS[kind](steps[:len(facts)], record.scene, facts, rng)
        if rng.random() < mix.wrong_answer:
            answer = p.wrong(rng)
    return Trace(render_trace([*steps, p.conclude(answer)], answer), answer,
                 answer == record.answer, kind)


def make_trace(seed: int, split: str, index: int, mix: TraceMix | None = None,
               size: int = 112) -> tuple[ShapesRecord, Trace]:
    """Record ``index`` of ``split`` and its trace: a pure function of the arguments."""
    record = make_record(seed, split, index, size)
    rng = random.Random(f"trace:{seed}:{split}:{index}")  # independent of the record's draws
    return record, write_trace(record, rng, mix or TraceMix())


# ---- the warm-up's DataModule --------------------------------------------------------------
@dataclass(frozen=True)
class TraceBatch:
    images: list[Image.Image]  # (B,) RGB, area within [min_pixels, max_pixels]
    questions: list[str]  # (B,)
    completions: list[str]  # (B,) the traces: the warm-up's targets
    answers: list[str]  # (B,) the records' answers (validation accuracy)
    ids: list[str]  # (B,)
    kinds: list[Kind]  # (B,) clean or the flaw of each trace

    def __len__(self) -> int:
        return len(self.questions)


class TraceDataset(Dataset):
    """Records of one toy-world source (``shapes:``, ``tally:``) with their traces; item i is
    record i of the split."""

    def __init__(self, source: ShapesSource | TallySource, mix: TraceMix):
        self.source, self.mix = source, mix

    def __len__(self) -> int:
        return self.source.n

    def __getitem__(self, index: int) -> tuple[ShapesRecord, Trace]:
        return self.source.trace(index, self.mix)


def collate(items: list[tuple[ShapesRecord, Trace]], min_pixels: int,
            max_pixels: int) -> TraceBatch:
    return TraceBatch([fit_pixels(r.image, min_pixels, max_pixels) for r, _ in items],
                      [r.question for r, _ in items], [t.text for _, t in items],
                      [r.answer for r, _ in items], [r.id for r, _ in items],
                      [t.kind for _, t in items])


def _toy_source(spec: str) -> ShapesSource | TallySource:
    """The toy-world source of a ``shapes:`` or ``tally:`` spec (they write warm-up traces)."""
    if spec.startswith("tally:"):
        return parse_tally(spec)
    if spec.startswith("shapes:"):
        return parse_shapes(spec)
    raise ConfigError(f"{spec!r}: the warm-up writes traces for the toy world's shapes: and "
                      "tally: sources only")


class TraceDataModule(L.LightningDataModule):
    """Shapes records with reasoning traces, for the supervised warm-up (``toyworld.warmup``).

    Args:
        train: ``shapes:<split>?n=..&size=..&seed=..`` (see ImageQuestionDataModule); one epoch
            is n records in order (every record is a fresh scene, so there is nothing to shuffle).
        val: Held-out source for validation (loss on its traces, greedy accuracy on its answers);
            None: no validation.
        batch_size: Records per step.
        mix: Shares of clean and flawed traces.
        min_pixels: Smaller images are scaled up to this area.
        max_pixels: Larger images are scaled down to this area.
        num_workers: DataLoader worker processes (0: in the main process).
    """

    def __init__(self, train: str = "shapes:warmup?n=4800", val: str | None = "shapes:val?n=64",
                 batch_size: int = 8, mix: TraceMix = TraceMix(), min_pixels: int = 56 * 56,
                 max_pixels: int = 112 * 112, num_workers: int = 0):
        super().__init__()
        if batch_size < 1 or num_workers < 0 or max_pixels < min_pixels:
            raise ConfigError(f"data needs batch_size >= 1, num_workers >= 0 and max_pixels >= "
                              f"min_pixels (got {batch_size}, {num_workers}, {max_pixels} < "
                              f"{min_pixels})")
        self.train_source = _toy_source(train)
        self.val_source = None if val is None else _toy_source(val)
        self.batch_size, self.mix, self.num_workers = batch_size, mix, num_workers
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    def _loader(self, source: ShapesSource | TallySource) -> DataLoader:
        collate_fn = partial(collate, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return DataLoader(TraceDataset(source, self.mix), batch_size=self.batch_size,
                          num_workers=self.num_workers, collate_fn=collate_fn)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_source)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_source is None else self._loader(self.val_source)

    def transfer_batch_to_device(self, batch: Any, device: torch.device,
                                 dataloader_idx: int) -> Any:
        return batch  # PIL images stay on the CPU; the processor makes tensors in the module


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m toyworld.traces",
                                     description=__doc__.splitlines()[0])
    for flag, default in (("--split", "warmup"), ("--n", 8), ("--seed", 0)):
        parser.add_argument(flag, default=default, type=type(default))
    args = parser.parse_args(argv)
    for index in range(args.n):
        record, trace = make_trace(args.seed, args.split, index)
        print(f"# {record.id} [{trace.kind}{'' if trace.correct else ', wrong'}] "
              f"{record.question} -> {record.answer}\n{trace.text}\n")


if __name__ == "__main__":
    main()
