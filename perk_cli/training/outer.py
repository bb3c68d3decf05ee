"""What both outer loops (PERK's meta-training and the in-context baseline's) share: the data order,
the learning-rate schedule, when to validate and to save, which validation result counts as better,
and how a stop request (Ctrl-C, SIGTERM) ends a run at a step boundary."""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from perk_cli.config import RunConfig
from perk_cli.errors import Interrupted as StoppedByUser
from perk_cli.files import staged_file


def lr_factor(step: int, config: RunConfig) -> float:
    """Linear warm-up, then cosine decay to 10% (or constant) over max_steps."""
    train = config.train
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    if train.schedule == "constant":
        return 1.0
    progress = (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def schedule_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], step: int, config: RunConfig) -> None:
    """Set each parameter group's learning rate for outer step `step` (0-based)."""
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * lr_factor(step, config)


def batch_indices(step: int, batch: int, n_tasks: int, seed: int) -> list[int]:
    """Task indices of an outer step: consecutive slices of a fresh permutation an epoch."""
    out = []
    for k in range(batch):
        position = step * batch + k
        epoch, offset = divmod(position, n_tasks)
        out.append(random.Random(f"{seed}/epoch/{epoch}").sample(range(n_tasks), n_tasks)[offset])
    return out


def validation_due(done: int, last: int, every: int) -> bool:
    """Validate after every `every` steps and after the last one."""
    return done % every == 0 or done == last


def better(metrics: dict, best: dict) -> bool:
    """Higher validation EM wins; a tie goes to the lower answer loss."""
    return (metrics["val_em"], -metrics["val_loss"]) > (best["val_em"], -best["val_loss"])


NO_BEST = {"val_em": -1.0, "val_loss": math.inf, "step": 0}


class SaveClock:
    """When last/ is due on wall-clock time (train.save_minutes since it was last saved), so a crash
    between validations loses minutes of work, not up to eval_every steps."""

    def __init__(self, minutes: float | None) -> None:
        self.seconds = None if minutes is None else 60 * minutes
        self.saved = time.monotonic()

    def due(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.saved >= self.seconds

    def reset(self) -> None:
        self.saved = time.monotonic()


def keep_logged_steps(path: Path, step: int) -> None:
    """metrics.jsonl cut back to the steps up to `step` (the resumed checkpoint's): the steps a stopped run
    logged after its last save are run again, and logged once."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a line torn by the stop: nothing after it was logged whole
    if len(kept) != len(lines):
        with staged_file(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))


class Interrupted(StoppedByUser):
    """Ctrl-C (or SIGTERM) during training: the last checkpoint was saved at `step`."""

    def __init__(self, step: int, path: Path):
        super().__init__(f"interrupted at step {step}; checkpoint saved in {path}")
        self.step, self.path = step, path


class StopRequests:
    """SIGINT and SIGTERM while training: the first asks the run to stop at the end of the current step,
    where last/ is saved and exactly resumable; a second stops at once (KeyboardInterrupt).

    Installed explicitly, so a run the shell started in the background (SIGINT ignored) or one a job
    scheduler ends with SIGTERM saves its state too. Only the main thread can take signals; elsewhere
    nothing is installed.
    """

    def __init__(self, on_request: Callable[[], None] | None = None) -> None:
        self.requested = False
        self._on_request = on_request
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self._on_request:
            self._on_request()

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
