"""Median time of each phase of an SR-MCR step, and peak memory, for a config.

    python benchmarks/step_time.py --config configs/tiny.yaml --steps 12
    python benchmarks/step_time.py --config configs/tiny.yaml --steps 12 -- --model.sampling.group_size=8
    python benchmarks/step_time.py --config configs/tiny.yaml --steps 8 --recipes

The phases are timed around the module's own calls (no copy of the training step): generate,
the policy log-prob pass, the blank-image pass (visual grounding), the reference pass (KL),
the reward, the passes of the cues that ask the policy itself (inside the reward: the text-only
answers of perception_sufficiency, the verification forward of self_verification), and the
update (loss forward + backward + optimizer step).

``--recipes`` measures each overlay of configs/recipes/ (or the ones named) on top of ``--config``
and prints a table of step time and the extra passes' time. There every completion is given an
``<answer>`` (a trained model's format rate is close to 1; a random tiny model never writes one),
so the cues that skip answer-less completions pay their full cost.
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import srmcr.module as module_lib  # noqa: E402
from datamodules.image_question import ImageQuestionDataModule  # noqa: E402
from srmcr.module import SRMCRModule  # noqa: E402
from srmcr.parsing import parse  # noqa: E402
from srmcr.policy_view import PolicyView  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# PolicyView method -> phase: the extra passes of the cues that ask the policy itself.
EXTRA_PASSES = {"generate_without_image": "text-only answers",
                "next_token_logits": "verification forward"}


class PhaseTimer:
    """Wraps the module's step phases; ``times[phase]`` holds one duration per step."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.phase = "other"
        self._patched: list[tuple[object, str, object]] = []

    def patch(self, owner, name: str, replacement) -> None:
        """``setattr`` that ``restore`` undoes (measure runs several configs in one process)."""
        self._patched.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    def restore(self) -> None:
        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)
        self._patched.clear()

    def wrap(self, owner, name: str, phase: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            outer, self.phase = self.phase, phase
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.times[phase].append(time.perf_counter() - start)
                self.phase = outer
        self.patch(owner, name, timed)

    def wrap_logprobs(self) -> None:
        inner = module_lib.rollout_logprobs

        def timed(model, rollout, micro_batch_size, pixel_values=None, **which):
            phase = "log-probs (blank image)" if pixel_values is not None else \
                "log-probs (reference)" if self.phase == "reference" else "log-probs (policy)"
            start = time.perf_counter()
            try:
                return inner(model, rollout, micro_batch_size, pixel_values, **which)
            finally:
                self.times[phase].append(time.perf_counter() - start)
        self.patch(module_lib, "rollout_logprobs", timed)


def with_answers(sample):
    """``sample`` whose completions all end with an ``<answer>`` ("0", "1", "2" in turn)."""
    def answering(*args, **kwargs):
        rollout = sample(*args, **kwargs)
        texts = [f"{t}<answer>{i % 3}</answer>" for i, t in enumerate(rollout.texts)]
        return replace(rollout, texts=texts, parsed=[parse(t) for t in texts])
    return answering


def build(config: str, overrides: list[str]) -> tuple[SRMCRModule, ImageQuestionDataModule]:
    cli = LightningCLI(SRMCRModule, ImageQuestionDataModule, run=False,
                       args=["-c", config, *overrides, "--trainer.logger=false",
                             "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false"])
    return cli.model, cli.datamodule


def measure(config: str, steps: int, warmup: int, overrides: list[str],
            answers: bool = False) -> dict:
    """Per-phase medians (seconds) over ``steps`` steps after ``warmup`` steps, plus memory.
    ``answers``: give every completion an answer (``with_answers``)."""
    module, data = build(config, overrides)
    timer = PhaseTimer()
    try:
        return _measure(module, data, timer, steps, warmup, answers)
    finally:
        timer.restore()


def _measure(module: SRMCRModule, data: ImageQuestionDataModule, timer: PhaseTimer, steps: int,
             warmup: int, answers: bool) -> dict:
    if answers:
        timer.patch(module_lib, "sample", with_answers(module_lib.sample))
    timer.wrap(module_lib, "sample", "generate")
    for method, phase in EXTRA_PASSES.items():
        timer.wrap(PolicyView, method, phase)
    timer.wrap_logprobs()
    timer.wrap(module, "reference_logp", "reference")
    timer.wrap(module, "optimize", "update")
    timer.wrap(module, "training_step", "step")
    module.configure_model()
    timer.wrap(module.reward, "forward", "reward")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = L.Trainer(max_steps=warmup + steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="auto", devices=1, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    medians = {phase: statistics.median(v[warmup * len(v) // (warmup + steps):])
               for phase, v in timer.times.items() if phase != "reference"}
    return {
        "phases": medians,
        "cues": list(module.reward.names),
        "tokens": module.sampling.group_size * data.batch_size * module.sampling.max_new_tokens,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available() else None,
    }


def report(result: dict) -> None:
    phases = result["phases"]
    step = phases.pop("step")
    print(f"{'phase':<26}{'median s':>10}{'share':>8}")
    for phase, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"{phase:<26}{seconds:>10.3f}{seconds / step:>8.1%}")
    print(f"{'whole step':<26}{step:>10.3f}{1:>8.0%}")
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB"
          + (f", peak CUDA {result['peak_cuda_mb']:.0f} MB" if result["peak_cuda_mb"] else ""))


def report_recipes(results: dict[str, dict]) -> None:
    """One row per recipe: step time, the blank-image pass (visual grounding) and the extra
    passes of the policy-asking cues (medians per step; the latter are part of the reward)."""
    print(f"{'recipe':<28}{'step s':>8}{'blank s':>9}{'extra s':>9}{'extra':>7}  cues")
    for recipe, result in results.items():
        phases = result["phases"]
        step, blank = phases["step"], phases.get("log-probs (blank image)", 0.0)
        extra = sum(phases.get(phase, 0.0) for phase in EXTRA_PASSES.values())
        print(f"{recipe:<28}{step:>8.3f}{blank:>9.3f}{extra:>9.3f}{extra / step:>7.1%}  "
              + ", ".join(result["cues"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipes", nargs="*", metavar="OVERLAY",
                        help="measure these recipe overlays (none named: all of configs/recipes)")
    parser.add_argument("overrides", nargs="*", help="LightningCLI overrides, after --")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    if args.recipes is not None:
        recipes = args.recipes or sorted(str(p) for p in (ROOT / "configs/recipes").glob("*.yaml"))
        results = {Path(r).stem: measure(args.config, args.steps, args.warmup,
                                         ["-c", r, *args.overrides], answers=True)
                   for r in recipes}
        print(f"config {args.config} {' '.join(args.overrides)}; {args.steps} steps after "
              f"{args.warmup} warm-up, torch threads {args.threads}; every completion answers")
        report_recipes(results)
        return
    result = measure(args.config, args.steps, args.warmup, args.overrides)
    print(f"config {args.config} {' '.join(args.overrides)}; {args.steps} steps after "
          f"{args.warmup} warm-up, torch threads {args.threads}")
    report(result)
    report_scoring_floor(result["phases"], args.threads)


def report_scoring_floor(phases: dict[str, float], threads: int) -> None:
    """How close scoring is to its floor: the text cues against one batched encoder pass over
    the step's distinct texts, and visual grounding against one forward."""
    from benchmarks.reward_cost import measure as reward_cost

    cost = reward_cost(threads=threads)
    print(f"text cues: {cost['cues_s']:.3f} s for {cost['completions']} completions "
          f"({cost['distinct_texts']} distinct texts) = {cost['ratio']:.2f}x one batched "
          "encoder pass (target <= 1.2)")
    blank, reference = phases.get("log-probs (blank image)"), phases.get("log-probs (reference)")
    if blank is not None and reference is not None:
        print(f"visual grounding: one extra forward (blank image) {blank:.3f} s, "
              f"{blank / reference:.2f}x the reference forward")


if __name__ == "__main__":
    main()
