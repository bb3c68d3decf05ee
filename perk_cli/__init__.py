"""perk: write long documents into a LoRA memory with meta-learned test-time gradient steps (PERK).

The command line (`perk --help`) is a thin layer over this library:

    from perk_cli import load_base, attach_lora, MetaLearner, InnerLoopSettings, LoraSettings

Names are imported lazily so that `perk --help` does not pay for importing torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "InnerLoopSettings": "perk_cli.config",
    "LoraSettings": "perk_cli.config",
    "ModelSettings": "perk_cli.config",
    "PerkError": "perk_cli.errors",
    "MetaLearner": "perk_cli.engine.meta",
    "load_base": "perk_cli.models.base",
    "attach_lora": "perk_cli.models.lora",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'perk_cli' has no attribute {name!r}")
