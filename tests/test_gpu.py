"""A few real steps of the shipped GPU configs on the tiny model, with their peak memory.

The model overlays run as written (4-bit nf4 or bf16 weights, bf16-mixed, checkpointing) with
only the model and the lengths shrunk, so these tests exercise the CUDA paths of bitsandbytes,
autocast and PEFT that CPU runs cannot. Each prints the measured peak beside ``tools.memory``'s
estimate for the same settings. They skip themselves without CUDA.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tools import memory

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model.policy.model=tiny:tiny", "--model.sampling.max_new_tokens=16",
        "--data.train=shapes:train?n=16&size=56", "--data.batch_size=2", "--data.num_workers=0",
        "--model.policy.max_pixels=3136", "--data.max_pixels=3136", "--data.min_pixels=784",
        "--trainer.max_steps=3", "--trainer.logger=false"]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("overlay", ["qwen2_5_vl_7b_qlora.yaml", "qwen2_5_vl_3b_lora_bf16.yaml"])
def test_gpu_config_trains_the_tiny_model_and_reports_peak_memory(overlay, tmp_path, monkeypatch):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("the GPU configs compute in bf16")
    from main import main

    monkeypatch.chdir(tmp_path)
    configs = [ROOT / "configs/tiny.yaml", ROOT / "configs" / overlay]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    cli = main(["fit", *(a for c in configs for a in ("-c", str(c))), *TINY])
    peak = torch.cuda.max_memory_allocated()
    module = cli.model
    lora = [p for p in module.model.parameters() if p.requires_grad]
    assert lora and all(p.is_cuda and torch.isfinite(p).all() for p in lora)
    assert module.guard.skipped == 0  # every update was finite and applied
    if overlay.startswith("qwen2_5_vl_7b_qlora"):
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in module.model.modules())
    plan = memory.plan(memory.settings_from_config(memory.load_config(configs, TINY)))
    print(f"{overlay} on tiny:tiny: peak allocated {peak / 2**20:.1f} MiB, estimate "
          f"{plan.peak_bytes / 2**20:.1f} MiB (with the {memory.ENCODER_BYTES / 2**20:.0f} MiB "
          f"encoder), "
          f"peak reserved {torch.cuda.max_memory_reserved() / 2**20:.1f} MiB")
    assert peak > memory.ENCODER_BYTES  # the encoder lives on the GPU too
