"""Two CPU ranks under Lightning DDP (gloo) agree on everything an update depends on.

Each rank must sample and score only its own prompts (disjoint data shards), while the reward's
reliability state and weights, the confidence, the temperature and the LoRA weights after every
step are bit-identical across ranks. The training script is this file: Lightning's subprocess
launcher re-runs ``python -m tests.test_ddp OUT`` for rank 1, and each rank writes its record.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS, G, B = 3, 4, 2
ARGS = ["fit", "-c", str(ROOT / "configs/tiny.yaml"), "-c", str(ROOT / "configs/ddp.yaml"),
        "--model.policy.model=tiny:tiny", f"--model.sampling.group_size={G}",
        "--model.sampling.max_new_tokens=8", "--data.train=shapes:train?n=16&size=56",
        f"--data.batch_size={B}", "--model.policy.max_pixels=3136", "--data.max_pixels=3136",
        "--data.min_pixels=784", "--data.shuffle_buffer=0", "--trainer.accelerator=cpu",
        "--trainer.devices=2", f"--trainer.max_steps={STEPS}", "--trainer.logger=false",
        # The random tiny model never answers, so answer_support (the default anchor) is flat
        # and no correlation is defined; without it the consensus anchors and exercises the
        # all-reduce.
        "--model.reward.cues=[semantic_alignment,lexical_fidelity,non_redundancy,"
        "visual_grounding,step_consistency]",
        "--trainer.callbacks+=tests.test_ddp.Record"]


class Record(L.Callback):
    """Per step: what this rank scored, and digests of the state that must agree across ranks."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.scored: list[dict] = []

    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.reward.register_forward_hook(self._scored)

    def _scored(self, reward, args, out) -> None:
        rollout = args[0]
        self.scored.append({"ids": list(rollout.ids), "rewards": len(out.rewards),
                            "temperature": rollout.temperature})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        lora = hashlib.sha256()
        for name, p in sorted(pl_module.model.named_parameters()):
            if p.requires_grad:
                lora.update(name.encode() + p.detach().cpu().numpy().tobytes())
        reward = pl_module.reward
        self.steps.append({
            **self.scored[-1], "batch_ids": list(batch.ids),
            "reliability": reward.reliability_ema.tolist(),
            "initialised": reward.reliability_initialised.tolist(),
            "weights": reward.weights().tolist(), "confidence": outputs["confidence"],
            "next_temperature": pl_module.temperature, "lora": lora.hexdigest()})

    def on_train_end(self, trainer, pl_module) -> None:
        out = Path(os.environ["SRMCR_DDP_OUT"]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"world_size": trainer.world_size, "steps": self.steps}))


@pytest.mark.slow
def test_ddp_ranks_score_their_own_groups_and_agree_on_the_update(tmp_path):
    env = {**os.environ, "SRMCR_DDP_OUT": str(tmp_path), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "tests.test_ddp"], cwd=tmp_path, env={
        **env, "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])},
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    print(f"2-rank DDP fit of {STEPS} steps: {time.perf_counter() - start:.1f} s")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    steps = [r["steps"] for r in ranks]
    assert [len(s) for s in steps] == [STEPS, STEPS]
    seen: list[set[str]] = [set(), set()]
    for step, (a, b) in enumerate(zip(*steps)):
        for rank, s in enumerate((a, b)):
            # Each rank scored G completions of each of its own B prompts, groups contiguous.
            assert s["rewards"] == B * G
            assert s["ids"] == [i for i in s["batch_ids"] for _ in range(G)]
            seen[rank] |= set(s["batch_ids"])
        assert not set(a["batch_ids"]) & set(b["batch_ids"]), f"step {step}: ranks share prompts"
        for key in ("reliability", "initialised", "weights", "confidence", "temperature",
                    "next_temperature", "lora"):
            assert a[key] == b[key], f"step {step}: {key} differs between ranks"
    assert not seen[0] & seen[1]  # the data shards are disjoint over the whole run
    assert any(steps[0][-1]["initialised"])  # the reliability EMA was updated, so compared
    assert len({s["lora"] for s in steps[0]}) == STEPS  # the adapter changed at every step


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    from main import main

    main(ARGS)
