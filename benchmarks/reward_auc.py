"""Which reward ranks right answers above wrong ones? Sample once, then score reward recipes.

    python benchmarks/reward_auc.py --split val --n 256 --save /tmp/val.pt        # ~4 min
    python benchmarks/reward_auc.py --load /tmp/val.pt                           # seconds
    python benchmarks/reward_auc.py --split heldout --n 256 --save /tmp/heldout.pt
    python benchmarks/reward_auc.py --ckpt <run>/checkpoints/last.ckpt --save /tmp/trained.pt

Collects G completions per labelled shapes question at temperature T from a config's model
(default configs/tiny.yaml: warm:small) with every cue the recipes use, through the module's own
sampled validation and the pre-flight callback (``main.py preflight`` prints the same figures
for one config). Then every recipe of ``RECIPES`` recombines the same raw cue scores with
``SelfReward.combine``, batch by batch in order (its reliability EMA learns as in training), and
the table gives each recipe's within-group AUC against correctness with a 95% interval over
questions (``srmcr.validity``). Labels only measure. Tune on ``--split val``, report on
``heldout``. ``--ckpt`` samples from a training run's checkpoint instead of the start model (its
LoRA weights only; the run's reward state and temperature are dropped): how well the cues still
rank right above wrong once a policy has been optimized against them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from srmcr import validity  # noqa: E402
from srmcr.reward import SelfReward  # noqa: E402

FIVE = ["semantic_alignment", "lexical_fidelity", "non_redundancy", "visual_grounding",
        "step_consistency"]
COLLECT = [*FIVE, "answer_agreement", "answer_support", "self_certainty", "answer_certainty"]
# name -> SelfReward arguments: one change at a time, then what helped together. Every recipe
# gates the completions without a usable answer.
RECIPES: dict[str, dict[str, Any]] = {
    "five, consensus, gate": dict(cues=FIVE),
    "five, fixed equal weights, gate": dict(cues=FIVE, reliability=False),
    "answer_agreement alone": dict(cues=["answer_agreement"], reliability=False),
    "self_certainty alone": dict(cues=["self_certainty"], reliability=False),
    "agreement + certainty, equal": dict(cues=["answer_agreement", "self_certainty"],
                                          reliability=False),
    "five + agreement, consensus": dict(cues=[*FIVE, "answer_agreement"]),
    "five + agreement, anchor": dict(cues=[*FIVE, "answer_agreement"],
                                     anchor="answer_agreement"),
    "five + agreement + certainty, anchor": dict(cues=COLLECT, anchor="answer_agreement"),
    "five + agreement (prior 3) + certainty, anchor": dict(
        cues=COLLECT, anchor="answer_agreement", priors={"answer_agreement": 3.0}),
    "five + agreement (prior 5), anchor": dict(
        cues=[*FIVE, "answer_agreement"], anchor="answer_agreement",
        priors={"answer_agreement": 5.0}),
    "answer_support alone": dict(cues=["answer_support"], reliability=False),
    "support + certainty, equal": dict(cues=["answer_support", "self_certainty"],
                                       reliability=False),
    "five + support, anchor": dict(cues=[*FIVE, "answer_support"], anchor="answer_support"),
    "five + support + certainty, anchor": dict(
        cues=[*FIVE, "answer_support", "self_certainty"], anchor="answer_support"),
    "five + support + certainty, anchor, tau 1": dict(
        cues=[*FIVE, "answer_support", "self_certainty"], anchor="answer_support", tau=1.0),
    "five + support + certainty, fixed equal": dict(
        cues=[*FIVE, "answer_support", "self_certainty"], reliability=False),
    "answer_certainty alone": dict(cues=["answer_certainty"], reliability=False),
    "support + answer certainty, equal": dict(cues=["answer_support", "answer_certainty"],
                                              reliability=False),
    "five + support + answer certainty, anchor": dict(
        cues=[*FIVE, "answer_support", "answer_certainty"], anchor="answer_support"),
    "five + support + both certainties, anchor": dict(cues=COLLECT[:5] + COLLECT[6:],
                                                      anchor="answer_support"),
}


def collect(args: argparse.Namespace) -> dict:
    """One validation pass of the config's model with every cue; the pre-flight's collection."""
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    from callbacks.preflight import PreflightReport
    from datamodules.image_question import ImageQuestionDataModule
    from srmcr.module import SRMCRModule

    cli = LightningCLI(SRMCRModule, ImageQuestionDataModule, run=False, args=[
        "-c", args.config, f"--model.reward.cues=[{','.join(COLLECT)}]",
        f"--model.sampling.val_group_size={args.group_size}",
        "--model.sampling.val_sample_batches=null",  # every question, not tiny.yaml's first 8
        f"--model.sampling.temperature={args.temperature}",
        f"--data.val=shapes:{args.split}?n={args.n}", f"--data.batch_size={args.batch_size}",
        "--trainer.logger=false", "--trainer.callbacks=[]", *args.overrides])
    report = PreflightReport(args.save)
    trainer = L.Trainer(logger=False, callbacks=[report], accelerator="cpu", devices=1,
                        enable_checkpointing=False, enable_model_summary=False)
    if args.ckpt is None:
        trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    else:
        import tempfile

        from benchmarks.toy_world import strip_reward_state
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = strip_reward_state(args.ckpt, Path(tmp) / "adapter_only.ckpt")
            trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, verbose=False)
    return {"summary": report.summary, "batches": report.batches}


def recipe_auc(batches: list[validity.ValidityBatch], kwargs: dict[str, Any]) -> Tensor:
    """Per-group AUC (B,) of a recipe's reward, recombined from the collected raw scores."""
    reward = SelfReward(**kwargs)
    per_group = []
    for b in batches:
        columns = [b.signals[:, b.names.index(n)] for n in reward.names]
        well_formed = b.signals[:, b.names.index("well_formed")]
        out = reward.combine(torch.stack(columns, -1), well_formed, b.group_size)
        per_group.append(validity.group_auc(out.rewards, b.correct, b.group_size))
    return torch.cat(per_group)



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--split", default="val", help="shapes split: val to tune, heldout to "
                        "report")
    parser.add_argument("--n", type=int, default=256, help="questions")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ckpt", type=Path, help="sample from this training checkpoint's "
                        "adapter instead of the config's start model")
    parser.add_argument("--save", type=Path, help="write the collected signals here")
    parser.add_argument("--load", type=Path, help="skip sampling: read signals saved by --save")
    parser.add_argument("overrides", nargs="*", help="LightningCLI overrides, after --")
    args = parser.parse_args(argv)
    data = torch.load(args.load, weights_only=False) if args.load else collect(args)
    summary, batches = data["summary"], data["batches"]
    print(f"\n{summary['questions']} questions, G = {summary['group_size']}: greedy "
          f"{summary['greedy_accuracy']:.3f}, mean@G {summary['sample_accuracy']:.3f}, maj@G "
          f"{summary['majority_accuracy']:.3f}, mixed groups {summary['mixed_groups']}\n")
    print("| signal or recipe | AUC | 95% interval |\n|---|---|---|")
    for name, s in summary["signals"].items():
        if name != "reward":
            print(f"| cue: {name} | {s.auc:.3f} | {s.low:.3f}–{s.high:.3f} |")
    for name, kwargs in RECIPES.items():
        per_group = recipe_auc(batches, kwargs)
        lo, hi = validity.bootstrap_interval(per_group)
        print(f"| {name} | {per_group.nanmean():.3f} | {lo:.3f}–{hi:.3f} |")


if __name__ == "__main__":
    main()
