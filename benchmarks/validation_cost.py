"""What does the sampled validation (val/reward_auc, mean@G, maj@G) add to a run's time?

    python benchmarks/validation_cost.py                       # configs/tiny.yaml, ~5 min
    python benchmarks/validation_cost.py -- --trainer.max_steps=20

Runs ``main.py fit`` on the config twice in fresh processes, once with the sampled validation
off (``--model.sampling.val_group_size=0``: greedy validation only, as before) and once as
configured, and prints both wall times and the share the sampled validation adds. Each run
writes to its own temporary folder; the warm start must already be cached (a first run of the
config builds it), or the first run would also time the build.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_run(config: str, extra: list[str], threads: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "main.py"), "fit", "-c", config,
                        f"--trainer.default_root_dir={out}",
                        *extra], check=True, cwd=out, stdout=subprocess.DEVNULL,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/tiny.yaml"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="LightningCLI overrides, after --")
    args = parser.parse_args(argv)
    off = timed_run(args.config, ["--model.sampling.val_group_size=0", *args.overrides],
                    args.threads)
    on = timed_run(args.config, list(args.overrides), args.threads)
    print(f"greedy validation only: {off:.1f} s; with the sampled validation: {on:.1f} s; "
          f"the sampled validation adds {on - off:.1f} s = {(on - off) / on:.0%} of the run's "
          f"total time ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
