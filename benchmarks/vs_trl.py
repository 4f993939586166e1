"""srmcr against TRL's GRPOTrainer: the same model, data, hyper-parameters and reward, timed.

    .venv-bench/bin/python -m benchmarks.vs_trl                        # both rewards, 3 rounds
    .venv-bench/bin/python -m benchmarks.vs_trl --rewards trivial --rounds 1 --steps 4
    .venv-bench/bin/python -m benchmarks.vs_trl --rewards text --gradient-checkpointing \
        --image-size 224                                # checkpointing, 64 image tokens
    .venv-bench/bin/python -m benchmarks.vs_trl --rewards text --gradient-checkpointing \
        --image-size 448                                # 256 image tokens, closer to a real model
    .venv-bench/bin/python -m benchmarks.vs_trl --rewards text --gradient-checkpointing \
        --image-size 224 --group-sizes 4 8 16           # step time against G, both trainers

From the repository root, with the ``bench`` extra in its OWN venv (never a dependency of srmcr):
``python3 -m venv .venv-bench && . .venv-bench/bin/activate && pip install torch==2.13.0 &&
pip install -e '.[bench]'``.

Equal on both sides: ``tiny:small``, fp32, sdpa, CPU; the shapes prompts (the datamodule's
stream: same images, questions, order; checked); B prompts x G completions per optimizer step,
mu = 1, no accumulation; sampling (temperature, top-p 1, top-k 0, no repetition penalty, the same
suppressed and end tokens); ``LoraArgs(r, alpha).config()``; AdamW, constant lr, no weight decay,
clip 1; beta with the adapter-disabled reference; the per-sequence loss mean (``aggregation=grpo``
= ``loss_type="grpo"``); the reward: srmcr's ``SelfReward`` over the same cues, wrapped as a TRL
reward function (which never sees log-probs, so no visual grounding on either side). ``--rewards
trivial`` uses ``lexical_fidelity`` alone (no encoder, ~0 cost): the trainers' own overhead.
``--gradient-checkpointing`` turns it on on both sides (non-reentrant; the real-model configs use
it); srmcr still runs each prompt once per group in the loss pass, TRL runs every row whole (and,
as it ships, back-propagates through the frozen vision tower, which srmcr's policy skips).
``--image-size 224`` renders the shapes at 224 x 224 (64 image tokens instead of 16; prompts of
206-220 tokens instead of 158-172, for 48 completion tokens): closer to a real model, whose prompt
is most of each sequence; ``--image-size 448``, 256 image tokens (prompts of about 400 tokens).
``--group-sizes`` with several G runs the comparison (first reward) for each and prints a table of
step time against G.

The random tiny model rarely samples an end token, so most completions run to max_new_tokens
(the report prints the mean length and the truncated share; srmcr's sampler, asked for top_k=0,
passes None, which transformers 5 fills with top-k 50, so its completions never end early).

Each run is a fresh subprocess; rounds alternate ABBA so that a drift of the shared machine's
load hits both sides alike. A step is timed from the start of the optimizer step to its end
(srmcr: ``training_step``, which holds the manual optimizer step; TRL: ``on_step_begin`` to
``on_step_end``), warm-up steps skipped, in wall time and in the process's CPU time (steadier
under other processes' load at 1 thread).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.vs_trl_report import (  # noqa: E402
    PHASES,
    machine,
    report,
    report_scaling,
    versions,
)
from srmcr.prompts import SYSTEM_PROMPT  # noqa: E402

CONFIG = "configs/tiny.yaml"
REWARDS: dict[str, tuple[str, ...]] = {  # text: the four text cues; trivial: ~0 cost, no encoder
    "text": ("semantic_alignment", "lexical_fidelity", "non_redundancy", "step_consistency"),
    "trivial": ("lexical_fidelity",)}


@dataclass(frozen=True)
class Setup:
    """What both trainers share (tiny.yaml's values)."""

    model: str = "tiny:small"  # random weights: both sides sample to max_new_tokens alike
    system_prompt: str = SYSTEM_PROMPT  # the 60-token default (tiny.yaml uses a 20-token one)
    group_size: int = 4  # G
    prompts: int = 4  # B per optimizer step
    max_new_tokens: int = 48
    temperature: float = 1.0
    beta: float = 0.01
    lr: float = 5e-4
    lora_r: int = 8
    lora_alpha: int = 16
    image_size: int = 112  # shapes rendered at 112 x 112 -> 16 image tokens; 224 -> 64; 448 -> 256
    min_pixels: int = 3136  # the datamodule's floor
    gradient_checkpointing: bool = False
    seed: int = 0
    threads: int = 1
    """torch threads, both sides. Not 2: on the shared 2-core machine (load 4-9) OpenMP spin-waits
    made 2 threads 2-10x slower (generate 0.7 s at 1 thread, 1.5-23 s at 2): noise, not work."""

    @property
    def max_pixels(self) -> int:
        return self.image_size**2

    @property
    def train(self) -> str:
        return f"shapes:train?size={self.image_size}"


def _wrap(owner, name: str, on_return: Callable) -> None:
    """Replace ``owner.name`` by a wrapper that calls ``on_return(wall_s, cpu_s, result, args)``."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        result = inner(*args, **kwargs)
        on_return(time.perf_counter() - start, time.process_time() - cpu, result, args)
        return result
    setattr(owner, name, wrapper)


# ---- srmcr side -------------------------------------------------------------------------------
def srmcr_overrides(s: Setup, cues: Sequence[str]) -> list[str]:
    """LightningCLI overrides that pin every shared setting, whatever tiny.yaml says."""
    sampling, grpo, policy = (f"--model.{k}." for k in ("sampling", "grpo", "policy"))
    data = "--data."
    return [
        f"--seed_everything={s.seed}", f"{sampling}group_size={s.group_size}",
        f"{sampling}max_new_tokens={s.max_new_tokens}", f"{sampling}temperature={s.temperature}",
        f"{sampling}top_p=1.0", f"{sampling}top_k=0", f"{grpo}beta={s.beta}",
        f"{grpo}num_iterations=1", f"{grpo}aggregation=grpo", f"{grpo}max_grad_norm=1.0",
        f"{grpo}micro_batch_size={s.prompts * s.group_size}",  # TRL: one forward of B*G
        f"{policy}model={s.model}", f"{sampling}system_prompt={s.system_prompt}",
        f"{policy}lora.r={s.lora_r}", f"{policy}lora.alpha={s.lora_alpha}",
        f"{policy}dtype=float32", f"{policy}max_pixels={s.max_pixels}",
        f"{policy}gradient_checkpointing={str(s.gradient_checkpointing).lower()}",
        f"--model.optimizer.init_args.lr={s.lr}", "--model.optimizer.init_args.weight_decay=0.0",
        f"--model.reward.cues=[{','.join(cues)}]", f"{data}batch_size={s.prompts}",
        f"{data}train={s.train}", f"{data}num_workers=0", f"{data}max_pixels={s.max_pixels}",
        f"{data}min_pixels={s.min_pixels}"]


def run_srmcr(s: Setup, cues: Sequence[str], steps: int, warmup: int) -> dict:
    import lightning as L

    import srmcr.module as module_lib
    from benchmarks.step_time import PhaseTimer, build

    module, data = build(CONFIG, srmcr_overrides(s, cues))
    timer, tokens, questions, cpu = PhaseTimer(), [], [], []

    def on_sample(seconds, cpu_s, rollout, args):
        tokens.append((len(rollout), int(rollout.completion_mask.sum()),
                       int(rollout.truncated.sum())))
        questions.extend(args[3])

    _wrap(module_lib, "sample", on_sample)
    timer.wrap(module_lib, "sample", "generate")
    timer.wrap_logprobs()
    timer.wrap(module, "reference_logp", "reference")
    timer.wrap(module, "optimize", "update")
    timer.wrap(module, "training_step", "step")
    _wrap(module, "training_step", lambda wall, cpu_s, result, args: cpu.append(cpu_s))
    module.configure_model()
    timer.wrap(module.reward, "forward", "reward")
    L.Trainer(max_steps=warmup + steps, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
              devices=1, num_sanity_val_steps=0, limit_val_batches=0).fit(module, datamodule=data)
    names = {"generate": "generate", "log-probs (policy)": "policy pass",
             "log-probs (blank image)": "blank-image pass",
             "log-probs (reference)": "reference pass", "reward": "reward", "update": "update"}
    n = len(timer.times["step"])
    per_step = {names[k]: _per_step(v, n) for k, v in timer.times.items() if k in names}
    records = [_record(timer.times["step"][i], cpu[i], {p: v[i] for p, v in per_step.items()},
                       *tokens[i]) for i in range(warmup, n)]
    return {"steps": records, "questions": questions[warmup * s.prompts:],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _per_step(calls: list[float], steps: int) -> list[float]:
    """Durations summed per step (a phase may run several times per step, or not at all)."""
    k = len(calls) // steps if steps else 0
    return [sum(calls[i * k:(i + 1) * k]) for i in range(steps)] if k else [0.0] * steps


def _record(step: float, cpu: float, phases: dict[str, float], completions: int, tokens: int,
            truncated: int) -> dict:
    phases = {p: phases.get(p, 0.0) for p in PHASES if p != "other"}
    phases["other"] = max(0.0, step - sum(phases.values()))
    return {"step": step, "cpu": cpu, "phases": phases, "completions": completions,
            "tokens": tokens, "truncated": truncated}


# ---- TRL side ---------------------------------------------------------------------------------
def shapes_examples(s: Setup, n: int) -> list:
    """The first n examples of the train stream, exactly as ImageQuestionDataModule yields them
    (same sources, decoding, shuffle buffer and seed), without importing Lightning."""
    from datamodules.records import DecodeArgs, resolve
    from datamodules.stream import RecordStream

    stream = RecordStream(resolve(s.train), DecodeArgs(s.min_pixels, s.max_pixels, 2000),
                          rank=0, world_size=1, num_workers=0, infinite=True,
                          shuffle_buffer=256, seed=s.seed, max_bad_fraction=0.1)
    return [tagged.example for tagged in islice(iter(stream), n)]


def trl_reward(cues: Sequence[str], group_size: int) -> Callable:
    """srmcr's SelfReward over ``cues`` as a TRL reward function (same texts, same maths)."""
    from benchmarks.reward_cost import make_rollout
    from srmcr.reward import SelfReward

    reward = SelfReward(cues=list(cues))

    def srmcr_self_reward(prompts, completions, question, **kwargs) -> list[float]:
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return reward(make_rollout(list(question), texts, group_size)).rewards.tolist()
    return srmcr_self_reward


def run_trl(s: Setup, cues: Sequence[str], steps: int, warmup: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from srmcr.policy import LoraArgs, PolicyArgs, load_processor, resolve_model
    from srmcr.rollout import end_token_ids

    path = resolve_model(s.model)
    processor = load_processor(PolicyArgs(model=s.model, max_pixels=s.max_pixels), path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa")
    tok, ends = processor.tokenizer, end_token_ids(processor.tokenizer)
    model.generation_config.eos_token_id = ends  # TRL masks after any of the model's eos ids
    # srmcr's suppressed tokens: every special token but the ends, and the embedding's padding
    vocab = model.get_output_embeddings().weight.shape[0]
    suppress = [i for i in tok.all_special_ids if i not in ends] + list(range(len(tok), vocab))
    examples = shapes_examples(s, (warmup + steps) * s.prompts)
    dataset = Dataset.from_dict({
        "prompt": [[{"role": "system", "content": s.system_prompt},
                    {"role": "user", "content": e.question}] for e in examples],
        "image": [e.image for e in examples], "question": [e.question for e in examples]})
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="vs_trl-"), use_cpu=True, bf16=False, fp16=False,
        seed=s.seed, per_device_train_batch_size=s.prompts * s.group_size,
        gradient_accumulation_steps=1, num_generations=s.group_size, num_iterations=1,
        max_completion_length=s.max_new_tokens, temperature=s.temperature, top_p=1.0, top_k=0,
        repetition_penalty=1.0, generation_kwargs={"suppress_tokens": suppress,
                                                   "eos_token_id": ends},
        beta=s.beta, epsilon=0.2, loss_type="grpo", scale_rewards="group", learning_rate=s.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=1.0, gradient_checkpointing=s.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, max_steps=warmup + steps,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[],
        disable_tqdm=True, shuffle_dataset=False, dataloader_num_workers=0, use_vllm=False,
        log_completions=False)
    clock = _TRLClock(TrainerCallback, ends, s.max_new_tokens)
    trainer = GRPOTrainer(model=model, reward_funcs=[trl_reward(cues, s.group_size)], args=config,
                          train_dataset=dataset, processing_class=processor,
                          peft_config=LoraArgs(r=s.lora_r, alpha=s.lora_alpha).config(),
                          callbacks=[clock.callback])
    clock.instrument(trainer)
    trainer.train()
    return {"steps": clock.records[warmup:],
            "questions": [e.question for e in examples[warmup * s.prompts:]],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


class _TRLClock:
    """Per-step phase times of a GRPOTrainer, from wrapped methods and step callbacks."""

    def __init__(self, callback_base: type, ends: list[int], max_new_tokens: int) -> None:
        self.records: list[dict] = []
        self.phases: dict[str, float] = defaultdict(float)
        self.completions = self.tokens = self.truncated = 0
        self.ends, self.max_new_tokens = set(ends), max_new_tokens
        clock = self

        class StepTimes(callback_base):
            def on_step_begin(self, args, state, control, **kwargs):
                clock.phases.clear()
                clock.completions = clock.tokens = clock.truncated = 0
                clock.start, clock.cpu = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                clock.step_done(time.perf_counter() - clock.start,
                                time.process_time() - clock.cpu)
        self.callback = StepTimes()

    def instrument(self, trainer) -> None:
        import torch

        def on_generate(seconds, cpu, result, args):
            self.phases["generate"] += seconds
            completions = result[0]
            self.completions += len(completions)
            self.tokens += sum(len(c) for c in completions)
            self.truncated += sum(len(c) == self.max_new_tokens and c[-1] not in self.ends
                                  for c in completions)

        def on_logprobs(seconds, cpu, result, args):
            if not torch.is_grad_enabled():  # the loss forward (with grad) belongs to the update
                self.phases["reference pass"] += seconds

        def adds_to(phase: str) -> Callable:
            return lambda seconds, cpu, result, args: self.phases.update(
                {phase: self.phases[phase] + seconds})

        _wrap(trainer, "_generate_single_turn", on_generate)
        _wrap(trainer, "_get_per_token_logps_and_entropies", on_logprobs)
        _wrap(trainer, "_calculate_rewards", adds_to("reward"))
        _wrap(trainer, "_generate_and_score_completions", adds_to("rollout"))

    def step_done(self, step: float, cpu: float) -> None:
        rollout = self.phases.pop("rollout", 0.0)
        parts = {p: self.phases.get(p, 0.0) for p in ("generate", "reference pass", "reward")}
        # Everything after the rollout (loss forward, backward, clip, optimizer) is the update;
        # the rollout's remainder (processor, padding, logging) falls into "other".
        parts["update"] = step - rollout
        self.records.append(_record(step, cpu, parts, self.completions, self.tokens,
                                    self.truncated))


# ---- orchestration ----------------------------------------------------------------------------
def worker_command(side: str, reward: str, args: argparse.Namespace, group_size: int) -> list[str]:
    """One fresh process that trains ``side`` and prints its per-step figures."""
    command = [sys.executable, "-m", "benchmarks.vs_trl", "--worker", side, "--rewards", reward,
               f"--steps={args.steps}", f"--warmup={args.warmup}", f"--threads={args.threads}",
               f"--image-size={args.image_size}", f"--group-sizes={group_size}"]
    return command + (["--gradient-checkpointing"] if args.gradient_checkpointing else [])


def spawn(side: str, reward: str, args: argparse.Namespace, group_size: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(args.threads), "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(worker_command(side, reward, args, group_size), cwd=ROOT, env=env,
                          capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"{side} run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rewards", nargs="+", choices=sorted(REWARDS),
                        default=["text", "trivial"])
    parser.add_argument("--rounds", type=int, default=3, help="runs per trainer and reward")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=Setup.threads)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on both sides")
    parser.add_argument("--image-size", type=int, default=Setup.image_size,
                        help="shapes image side in pixels (224: 64 image tokens per prompt)")
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[Setup.group_size],
                        help="G; several: step time against G (first reward only)")
    parser.add_argument("--worker", choices=["srmcr", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    s = Setup(threads=args.threads, image_size=args.image_size, group_size=args.group_sizes[0],
              gradient_checkpointing=args.gradient_checkpointing)
    if args.worker:
        import torch
        torch.set_num_threads(args.threads)
        run = run_srmcr if args.worker == "srmcr" else run_trl
        result = run(s, REWARDS[args.rewards[0]], args.steps, args.warmup)
        print("RESULT " + json.dumps(result))
        return
    print("command: " + shlex.join([sys.executable, "-m", "benchmarks.vs_trl", *sys.argv[1:]]))
    print(f"machine: {machine()}\nversions: {versions()}\nsetup: {asdict(s)}; "
          f"{args.steps} timed steps after {args.warmup} warm-up, {args.rounds} rounds (ABBA)")
    if len(args.group_sizes) > 1:
        reward = args.rewards[0]
        scaling = {g: compare(reward, args, g) for g in args.group_sizes}
        print(f"same prompts on both sides: yes; load average now {os.getloadavg()[0]:.1f}")
        report_scaling(reward, scaling)
        return
    results = {reward: compare(reward, args, s.group_size) for reward in args.rewards}
    print(f"same prompts on both sides: yes; load average now {os.getloadavg()[0]:.1f}")
    report(results, s.max_new_tokens)


def compare(reward: str, args: argparse.Namespace, group_size: int) -> dict[str, list[dict]]:
    """``args.rounds`` runs of each trainer, in ABBA order."""
    runs: dict[str, list[dict]] = {"srmcr": [], "trl": []}
    for r in range(args.rounds):
        for side in ("srmcr", "trl") if r % 2 == 0 else ("trl", "srmcr"):
            runs[side].append(spawn(side, reward, args, group_size))
            median = statistics.median(x["step"] for x in runs[side][-1]["steps"])
            print(f"  {reward} G={group_size} round {r + 1} {side}: median step {median:.3f} s",
                  flush=True)
    if runs["srmcr"][0]["questions"] != runs["trl"][0]["questions"]:
        sys.exit("the two trainers did not see the same prompts: the comparison is void")
    return runs


if __name__ == "__main__":
    main()
