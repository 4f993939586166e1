"""Measured peak tensor memory of real SR-MCR steps on CPU, against ``tools.memory``'s estimate.

    python benchmarks/memory_check.py --model tiny:tiny
    python benchmarks/memory_check.py --model tiny:small -- \
        --model.policy.gradient_checkpointing=true

What is measured: bytes of live torch tensors, the quantity ``torch.cuda.max_memory_allocated``
reports on a GPU. The CPU has no such counter, so the steps after the warm-up run under
``torch.profiler.profile(profile_memory=True)``, whose allocation events carry the CPU
allocator's running total of the bytes allocated since profiling began; each phase of the step
(generate, log-prob passes, reward, loss pass) is a ``record_function`` range, and its peak is
the highest running total inside the range. Tensors that were alive before (policy weights and
LoRA, AdamW state, the sentence encoder) are added from their sizes, and so are the pixels the
processor makes for the sampler: numpy memory on CPU, which the profiler does not see, and
device memory on a GPU. Process RSS (Python, the libraries, allocator caches) is not counted: it
is not what fills a GPU.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import srmcr.module as module_lib  # noqa: E402
from datamodules.image_question import ImageQuestionDataModule  # noqa: E402
from srmcr import encoder as encoder_lib  # noqa: E402
from tools import memory  # noqa: E402
from toyworld.shapes import make_record  # noqa: E402
from toyworld.sources import parse_shapes  # noqa: E402

PHASES = {"generation": (module_lib, "sample"), "log-prob passes": (None, "score_passes"),
          "reference pass": (None, "reference_logp"), "loss pass": (None, "optimize")}


class PhaseProfiler(L.Callback):
    """Profiles allocations from batch ``start`` to the end of fit."""

    def __init__(self, start: int) -> None:
        self.start, self.prof = start, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.start:
            self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self.prof.__enter__()

    def on_train_end(self, trainer, pl_module) -> None:
        self.prof.__exit__(None, None, None)

    def phase_peaks(self) -> dict[str, float]:
        """Per phase: the highest bytes allocated since profiling began, inside the phase."""
        events = self.prof.profiler.kineto_results.events()
        allocs = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        times = [t for t, _ in allocs]
        live = list(itertools.accumulate(b for _, b in allocs))
        peaks: dict[str, float] = {}
        for e in events:
            if e.name().startswith("phase/"):
                i = bisect.bisect_left(times, e.start_ns())
                j = bisect.bisect_right(times, e.end_ns())
                name = e.name().removeprefix("phase/")
                peaks[name] = max(peaks.get(name, 0.0), max(live[i:j], default=0.0))
        return peaks


def wrap(owner, name: str, phase: str) -> None:
    inner = getattr(owner, name)

    def ranged(*args, **kwargs):
        with record_function(f"phase/{phase}"):
            return inner(*args, **kwargs)
    setattr(owner, name, ranged)


def record_pixels(owner) -> list[int]:
    """Bytes of each sampled rollout's pixel values (``owner.sample``'s processor output)."""
    sizes: list[int] = []
    inner = owner.sample

    def sampling(*args, **kwargs):
        rollout = inner(*args, **kwargs)
        sizes.append(rollout.pixel_values.numel() * rollout.pixel_values.element_size())
        return rollout
    owner.sample = sampling
    return sizes


def tensor_bytes(tensors) -> int:
    """Bytes of distinct storages, with bitsandbytes' quantization constants."""
    seen: dict[int, int] = {}
    for t in tensors:
        parts = [t]
        state = getattr(t, "quant_state", None)
        while state is not None:  # nested: double quantization keeps a second state
            parts += [x for x in (state.absmax, state.code, state.offset) if torch.is_tensor(x)]
            state = getattr(state, "state2", None)
        for x in parts:
            seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
    return sum(seen.values())


def measure(config: Path, overrides: list[str], steps: int, warmup: int) -> dict[str, float]:
    cli = LightningCLI(module_lib.SRMCRModule, ImageQuestionDataModule, run=False,
                       args=["-c", str(config), *overrides, "--trainer.logger=false",
                             "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false"])
    module, data = cli.model, cli.datamodule
    module.configure_model()
    pixels = record_pixels(module_lib)
    for phase, (owner, name) in PHASES.items():
        wrap(owner or module, name, phase)
    wrap(module.reward, "forward", "reward")
    profiler = PhaseProfiler(warmup)
    trainer = L.Trainer(max_steps=warmup + steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        devices=1, num_sanity_val_steps=0, limit_val_batches=0,
                        precision=cli.config.trainer.precision, callbacks=[profiler])
    trainer.fit(module, datamodule=data)
    optimizer = module.optimizers().optimizer
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    encoders = [p for m in encoder_lib._MODELS.values() for p in m.parameters()]
    measured = {"weights + LoRA": tensor_bytes(list(module.model.parameters())
                                               + list(module.model.buffers())),
                "optimizer state": tensor_bytes(state), "encoder": tensor_bytes(encoders)}
    measured.update(profiler.phase_peaks())
    measured["generation"] += max(pixels)
    return measured


def longest_question(spec: str) -> int:
    """Characters of the longest question of a shapes source (the estimate's question length)."""
    src = parse_shapes(spec)
    return max(len(make_record(src.seed, src.split, i, src.size).question)
               for i in range(min(src.n, 512)))


def compare(measured: dict[str, float], plan: memory.MemoryPlan) -> list[tuple]:
    """(part, estimated, measured) rows in bytes; phases are on top of the resident parts, the
    log-prob phase is the larger of the policy and reference passes (the estimate's bound)."""
    res = plan.resident
    lora = sum(v for k, v in res.items() if k.startswith("LoRA"))
    rows = [("weights + LoRA", res["weights"] + lora, measured["weights + LoRA"]),
            ("optimizer state", sum(v for k, v in res.items() if k.startswith("optimizer")),
             measured["optimizer state"]),
            ("encoder", res.get("reward sentence encoder", 0.0), measured["encoder"])]
    logprob = max(measured.get("log-prob passes", 0.0), measured.get("reference pass", 0.0))
    phases = {"generation": measured["generation"], "log-prob passes": logprob,
              "loss pass": measured["loss pass"]}
    rows += [(name, plan.phases[name].bytes, value) for name, value in phases.items() if value]
    resident = sum(r[2] for r in rows[:3])
    peak = resident + max(phases.values())
    rows.append(("peak (resident + largest phase)", plan.peak_bytes, peak))
    rows.append(("peak without the encoder", plan.peak_bytes - rows[2][1], peak - rows[2][2]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/tiny.yaml")
    parser.add_argument("--model", default="tiny:small")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=1, help="steps before profiling")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="LightningCLI overrides, after --")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    overrides = [f"--model.policy.model={args.model}", *args.overrides]
    config = memory.load_config([args.config], overrides)
    settings = memory.settings_from_config(config, longest_question(config["data"]["train"]))
    plan = memory.plan(settings)
    measured = measure(args.config, overrides, args.steps, args.warmup)
    print(f"{args.model} {args.config.name} {' '.join(args.overrides)}: {args.steps} profiled "
          f"steps after {args.warmup}")
    print(memory.table(plan).splitlines()[0])
    print(f"{'part':<36}{'estimated MiB':>14}{'measured MiB':>13}{'error':>8}")
    for part, estimated, value in compare(measured, plan):
        error = f"{estimated / value - 1:+.0%}" if value else ""
        print(f"{part:<36}{estimated / 2**20:>14.2f}{value / 2**20:>13.2f}{error:>8}")


if __name__ == "__main__":
    main()
