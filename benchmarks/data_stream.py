"""Streaming a table of image bytes: peak memory stays flat as the file grows.

    python -m benchmarks.data_stream [--rows 2000 20000] [--side 48] [--format parquet saved]

For each row count, ``datasets`` writes the table (``Dataset.from_generator`` with the ``Image``
feature, a distinct noise PNG per row in bytes): a Parquet file with ``to_parquet``'s own row
groups, or a ``save_to_disk`` folder with ``--format saved``. A fresh process then streams it
through ``ImageQuestionDataModule``'s validation pass, every record read and its image decoded,
and prints: the peak resident memory (ru_maxrss) above its baseline after imports and setup,
after the first 2,000 records and at the end; the growth of its anonymous part; the peak of
pyarrow's memory pool; records per second. Memory that grew with the file would show as a larger
peak for more rows.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image


def write_table(path: Path, rows: int, side: int, seed: int = 0) -> Path:
    """``rows`` records with distinct ``side`` x ``side`` noise PNGs, written by ``datasets``:
    ``to_parquet`` for a ``.parquet`` path, else ``save_to_disk`` into the folder ``path``."""
    import io

    from datasets import Dataset, Features, Value, disable_progress_bars
    from datasets import Image as ImageFeature

    disable_progress_bars()

    def records():
        rng = random.Random(seed)
        for i in range(rows):
            buffer = io.BytesIO()
            Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)).save(
                buffer, format="PNG", compress_level=1)
            yield {"image": {"bytes": buffer.getvalue(), "path": None},
                   "question": f"What is in picture {i}?", "answer": str(i % 10)}

    features = Features({"image": ImageFeature(), "question": Value("string"),
                         "answer": Value("string")})
    dataset = Dataset.from_generator(records, features=features,
                                     cache_dir=str(path.parent / f"cache-{rows}"))
    if path.suffix == ".parquet":
        dataset.to_parquet(str(path))
    else:
        dataset.save_to_disk(str(path))
    return path


def _anon_mb() -> float:
    """Resident anonymous memory now (not file pages, which memory maps share and the OS evicts)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def stream(path: Path, batch_size: int = 8, first: int = 2000) -> dict[str, float]:
    """Read and decode every record of ``path`` once: peak memory above the baseline after the
    ``first`` records and at the end, pyarrow's peak, and speed."""
    import pyarrow as pa

    from datamodules.image_question import ImageQuestionDataModule

    data = ImageQuestionDataModule(val=str(path), batch_size=batch_size, min_pixels=28 * 28,
                                   max_pixels=56 * 56)
    data.setup("validate")  # the probe reads the first record
    baseline, anon, start = _peak_mb(), _anon_mb(), time.perf_counter()
    records, early, anon_peak = 0, None, 0.0
    for batch in data.val_dataloader():
        data.observe(batch)
        records += len(batch)
        anon_peak = max(anon_peak, _anon_mb())
        if early is None and records >= first:
            early = _peak_mb()
    seconds = time.perf_counter() - start
    return {"records": records, "read": data.read, "baseline_mb": round(baseline, 1),
            f"growth_first_{first}_mb": round((early or _peak_mb()) - baseline, 1),
            "growth_mb": round(_peak_mb() - baseline, 1),
            "anon_growth_mb": round(anon_peak - anon, 1),
            "arrow_peak_mb": round(pa.default_memory_pool().max_memory() / 2**20, 1),
            "records_per_s": round(records / seconds, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--side", type=int, default=48, help="image side, pixels")
    parser.add_argument("--format", choices=["parquet", "saved"], nargs="+", default=["parquet"],
                        help="a Parquet file, a save_to_disk folder, or both")
    parser.add_argument("--folder", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:  # the measuring process: nothing else ran in it
        print(json.dumps(stream(args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for fmt in args.format:
            for rows in args.rows:
                name = f"stream-{rows}" + (".parquet" if fmt == "parquet" else "")
                path = write_table(folder / name, rows, args.side)
                done = subprocess.run([sys.executable, "-m", "benchmarks.data_stream",
                                       "--child", str(path)], capture_output=True, text=True,
                                      check=True, cwd=Path(__file__).resolve().parents[1])
                result = json.loads(done.stdout.strip().splitlines()[-1])
                size = sum(f.stat().st_size for f in [path, *path.glob("*")] if f.is_file())
                print(f"format={fmt} rows={rows} file_mb={size / 2**20:.1f} " +
                      " ".join(f"{k}={v}" for k, v in result.items()), flush=True)

if __name__ == "__main__":
    main()
