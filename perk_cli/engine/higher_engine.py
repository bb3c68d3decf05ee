"""The `higher` engine: the official implementation's library, for comparing numerics and cost.

Second-order unrolling only, SGD or Adam (torch.optim semantics as higher implements them; higher's
Adam adds eps to sqrt(v) before the bias correction, so it differs from torch.optim.Adam by
O(eps)). Each LoRA tensor is its own parameter group so that learned step sizes apply per tensor.

`higher` 0.2.1 cannot monkey-patch PEFT models as installed: it builds, for every module,
`class MonkeyPatched(type(module), _MonkeyPatchBase)` where `_MonkeyPatchBase(abc.ABC, nn.Module)`. PEFT's LoRA layers are `Linear(nn.Module, LoraLayer)` with
`LoraLayer` deriving from `abc.ABC` *after* nn.Module, so the two base orders conflict and Python
raises "Cannot create a consistent method resolution order (MRO) for bases Module, ABC".

The fix rebuilds `_MonkeyPatchBase` with the same body as `(nn.Module,)` and metaclass ABCMeta:
its abstract method still works, and the MRO merge succeeds. Nothing in the installed package is
edited; `patch_higher()` swaps the class in the imported module once and is idempotent.
"""

from __future__ import annotations

import abc
from types import SimpleNamespace

import torch

from perk_cli.config import InnerLoopSettings
from perk_cli.engine.batches import TokenBatch
from perk_cli.engine.inner_loop import InnerResult
from perk_cli.engine.learned import TokenWeighter
from perk_cli.engine.losses import inner_loss

_PATCHED = "_perk_mro_shim"


def patch_higher():
    """The `higher` module with its _MonkeyPatchBase rebuilt as (nn.Module,) with metaclass ABCMeta."""
    import higher.patch

    original = higher.patch._MonkeyPatchBase
    if getattr(original, _PATCHED, False):
        return higher
    body = {k: v for k, v in vars(original).items() if k not in ("__dict__", "__weakref__")}
    body[_PATCHED] = True
    higher.patch._MonkeyPatchBase = abc.ABCMeta("_MonkeyPatchBase", (torch.nn.Module,), body)
    return higher


def _patched_call(fmodel):
    """Call a higher-patched PEFT causal LM, returning logits and the last hidden state.

    transformers 5 collects `hidden_states` with forward hooks, which higher's patched module copies
    do not carry; so run the decoder and the LM head separately (the head's input is the last hidden
    state, exactly what `hidden_states[-1]` holds on the func path).
    """
    lm = fmodel.base_model.model
    decoder = getattr(lm, lm.base_model_prefix)

    def call(input_ids, attention_mask, output_hidden_states=False):
        # Calling submodules directly leaves higher's parameter box filled with whatever it held
        # last; refill it from the newest fast weights before every call.
        fmodel._refill_params_box(None)
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return SimpleNamespace(logits=lm.get_output_embeddings()(hidden), hidden_states=(hidden,))

    return call


def run_inner_loop_higher(model: torch.nn.Module, lora_names: list[str], groups: list[TokenBatch],
                          step_sizes: torch.Tensor, weighter: TokenWeighter | None,
                          settings: InnerLoopSettings) -> InnerResult:
    higher = patch_higher()
    named = dict(model.named_parameters())
    lora = [named[n] for n in lora_names]
    groups_spec = [{"params": [p]} for p in lora]
    if settings.optimizer == "sgd":
        opt = torch.optim.SGD(groups_spec, lr=settings.lr_init, weight_decay=settings.weight_decay)
    else:  # adam, or adamw with no weight decay (identical); validated in InnerLoopSettings
        opt = torch.optim.Adam(groups_spec, lr=settings.lr_init, betas=settings.betas, eps=settings.eps,
                               weight_decay=settings.weight_decay)
    normaliser = sum(g.n_targets for g in groups)
    losses = []
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False, track_higher_grads=True) as (fmodel, diffopt):
        call = _patched_call(fmodel)
        for step in range(step_sizes.shape[0]):
            loss = sum(inner_loss(call, g, weighter, normaliser) for g in groups)
            losses.append(float(loss.detach()))
            diffopt.step(loss, override={"lr": list(step_sizes[step])})
        fast = dict(zip(named, fmodel.parameters()))
    return InnerResult({n: fast[n] for n in lora_names}, losses)
