"""Compatibility shim so that `higher` 0.2.1 can monkey-patch PEFT models.

higher builds, for every module, `class MonkeyPatched(type(module), _MonkeyPatchBase)` where
`_MonkeyPatchBase(abc.ABC, nn.Module)`. PEFT's LoRA layers are `Linear(nn.Module, LoraLayer)` with
`LoraLayer` deriving from `abc.ABC` *after* nn.Module, so the two base orders conflict and Python
raises "Cannot create a consistent method resolution order (MRO) for bases Module, ABC".

The fix rebuilds `_MonkeyPatchBase` with the same body as `(nn.Module,)` and metaclass ABCMeta:
its abstract method still works, and the MRO merge succeeds. Nothing in the installed package is
edited; `patch_higher()` swaps the class in the imported module once and is idempotent.
"""

from __future__ import annotations

import abc

import torch

_PATCHED = "_perk_mro_shim"


def patch_higher():
    import higher.patch

    original = higher.patch._MonkeyPatchBase
    if getattr(original, _PATCHED, False):
        return higher
    body = {k: v for k, v in vars(original).items() if k not in ("__dict__", "__weakref__")}
    body[_PATCHED] = True
    higher.patch._MonkeyPatchBase = abc.ABCMeta("_MonkeyPatchBase", (torch.nn.Module,), body)
    return higher
