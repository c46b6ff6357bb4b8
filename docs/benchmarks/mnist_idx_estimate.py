"""How long the MultiMNIST-from-IDX study takes here, without MNIST: ``--estimate`` on synthetic IDX files.

``python -m mao_lab.study --estimate`` depends only on shapes (every step and evaluation costs the same
whatever the pixels), so four IDX files of MNIST's exact sizes (60 000 and 10 000 random 28x28 "digits",
labels 0..9, MNIST's magic numbers and big-endian headers) stand in for the real ones.  This script writes
them into a temporary folder, writes a study file naming ``mao_lab.problems:mnist_idx_multimnist`` with that
folder as ``root`` and nothing else (so the design is the shipped study's: its methods, rates, seeds and
steps), runs the estimate and, with ``--baseline``, the shipped study's estimate right after it in the same
conditions, so a busy machine's slowdown can be divided out.  Nothing is downloaded; the folder is deleted.

    PYTHONPATH=$PWD python docs/benchmarks/mnist_idx_estimate.py --workers 2 --baseline \
        --json docs/benchmarks/mnist_idx_estimate_cpu_2cores.json

The JSON records both predictions, the date, the machine and the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"train": 60_000, "t10k": 10_000}


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file as MNIST distributes it: big-endian magic and dimensions, then the unsigned bytes."""
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_synthetic_mnist(root: Path, seed: int = 0) -> None:
    """MNIST's four IDX files, at MNIST's sizes, holding random pixels and labels."""
    rng = np.random.default_rng(seed)
    for prefix, count in SIZES.items():
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(
            idx_bytes(rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), 2051)
        )
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(rng.integers(0, 10, count, dtype=np.uint8), 2049))


def run_estimate(arguments: list[str]) -> tuple[float, str, float]:
    """``python -m mao_lab.study --estimate ARGUMENTS``: (predicted minutes, its output, seconds it took)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mao_lab.study", "--estimate", *arguments], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"mnist_idx_estimate: the estimate failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    found = re.search(r"predicted wall time with \d+ worker\(s\): ([0-9.]+) min", done.stdout)
    if found is None:
        sys.exit("mnist_idx_estimate: no 'predicted wall time' line in the estimate's output")
    return float(found.group(1)), done.stdout, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline", action="store_true", help="also estimate the shipped study, right after")
    parser.add_argument("--json", type=Path, default=None, help="write the record here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mnist-idx-synthetic-") as folder:
        root = Path(folder)
        write_synthetic_mnist(root)
        study_file = root / "mnist_idx.toml"
        study_file.write_text(f'problem = "mao_lab.problems:mnist_idx_multimnist"\n\n[options]\nroot = "{root}"\n')
        workers = ["--workers", str(args.workers)]
        minutes, output, seconds = run_estimate(["--study-file", str(study_file), *workers])
    print(output)
    record: dict[str, object] = {
        "benchmark": "mnist_idx_study_estimate",
        "command": "python -m mao_lab.study --study-file <synthetic>/mnist_idx.toml --estimate "
        f"--workers {args.workers}",
        "data": "synthetic IDX files of MNIST's sizes (60000 + 10000 random 28x28 digits)",
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "workers": args.workers,
        "mnist_idx_predicted_min": minutes,
        "mnist_idx_estimate_took_s": round(seconds, 1),
        "mnist_idx_output": output.strip().splitlines(),
    }
    if args.baseline:
        base_minutes, base_output, base_seconds = run_estimate(["--workers", str(args.workers)])
        print(base_output)
        record.update(
            shipped_predicted_min=base_minutes,
            shipped_estimate_took_s=round(base_seconds, 1),
            shipped_output=base_output.strip().splitlines(),
            mnist_idx_vs_shipped=round(minutes / base_minutes, 3),
        )
    record["load_average_before"] = [round(v, 2) for v in load_before]
    record["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps({k: v for k, v in record.items() if not k.endswith("_output")}, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
