"""Replacing modules' `forward` for the length of a block, and putting back exactly what was there.

The one way the engine redirects a module for a call (the frozen prefix's pass-through blocks, the
task-batched LoRA matrices); the modules themselves and their parameters are never touched.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

from torch import nn


@contextmanager
def replaced_forwards(replacements: list[tuple[nn.Module, Callable]]):
    """Within the block each module's `forward` is the given callable; afterwards, its own again
    (an instance-level forward it had before is restored, not deleted)."""
    saved = [module.__dict__.get("forward") for module, _ in replacements]
    for module, forward in replacements:
        module.forward = forward
    try:
        yield
    finally:
        for (module, _), forward in zip(replacements, saved):
            if forward is None:
                del module.forward
            else:
                module.forward = forward
