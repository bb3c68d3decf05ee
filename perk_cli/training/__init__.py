"""Meta-training (`perk meta-train`): the outer loop, its checkpoints, and the in-context baseline trained beside it."""
