"""Why the tiny preset trains its base in the outer loop: the same meta-training with and without it.

    python experiments/tiny_base.py        # about 3 minutes on 2 cores

qa1 at 128 tokens (2,000 training tasks, 32 validation tasks), LoRA r=8, K=2, 150 outer steps of
8 tasks; prints the final outer loss, validation answer loss and validation EM of each variant.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from perk_cli import __version__
from perk_cli.config import GENERATOR_LAYOUT, InnerLoopSettings, LoraSettings, PrepareSettings, PromptSettings, RunConfig, TrainSettings
from perk_cli.prepare import prepare
from perk_cli.training.meta_train import meta_train


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare(PrepareSettings(task="babi", subtask="qa1", facts=4, length=128, segment_tokens=64, train=2000,
                                validation=32, test=0, out=str(data), seed=0, **GENERATOR_LAYOUT))
        for train_base in (False, True):
            config = RunConfig(
                perk_version=__version__, lora=LoraSettings(rank=8, alpha=16),
                inner=InnerLoopSettings(steps=2, lr_init=1e-2, unroll_start=1), prompt=PromptSettings(segment_tokens=64),
                train=TrainSettings(max_steps=150, tasks_per_batch=8, lr=2e-3, warmup_steps=20, schedule="constant",
                                    eval_every=150, eval_tasks=32, train_base=train_base, baseline=False))
            result = meta_train(config, data, Path(tmp) / f"run-{train_base}")
            shown = {k: round(v, 3) for k, v in result.last_metrics.items() if k in ("outer_loss", "val_loss", "val_em")}
            print(f"train_base={train_base}: {json.dumps(shown)}", flush=True)


if __name__ == "__main__":
    main()
