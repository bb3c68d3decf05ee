"""`perk eval`: PERK and its baselines scored on held-out tasks."""
