"""The LoRA tensors of a PEFT model, by name: listing them, copying values in for a while, and
applying one LoRA per task's rows (the task-batched inner loop).

The engine never copies or patches the base model; values computed functionally (an adapted
memory, a fresh initialisation) reach the real parameters only through these helpers.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from perk_cli.engine.forwards import replaced_forwards


def lora_parameters(peft_model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The LoRA tensors of a PEFT model, by their full parameter name, in a fixed order."""
    return {n: p for n, p in peft_model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


@torch.no_grad()
def copy_into(model: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Copy `values` into the model's parameters of those names (cast to each parameter's dtype)."""
    params = dict(model.named_parameters())
    for name, value in values.items():
        params[name].copy_(value.to(params[name].dtype))


@contextmanager
def lora_values(model: torch.nn.Module, values: dict[str, torch.Tensor]):
    """Within the block the parameters named in `values` hold them; afterwards their own values again."""
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in values}
    try:
        copy_into(model, values)
        yield model
    finally:
        copy_into(model, saved)


@contextmanager
def per_task_lora(model: torch.nn.Module, lora_names: list[str], rows_per_task: torch.Tensor):
    """Within the block, each LoRA matrix (called with a stacked value [n_tasks, out, in], as the
    task-batched inner loop passes it) applies task i's matrix to task i's rows: the batch's rows are
    the tasks' rows in order, `rows_per_task[i]` of them for task i.

    Only the PEFT adapter matrices (`lora_A.<adapter>`, `lora_B.<adapter>`, plain Linear layers without
    bias) are redirected, never a base layer; on leaving, their own forward is back.
    """
    counts = [int(c) for c in rows_per_task]
    equal = len(set(counts)) == 1
    repeats = rows_per_task.to(torch.long)

    def batched(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight  # [n_tasks, out, in] under the functional call
        if equal:  # every task has c rows: one [c * T, in] block per task
            n, c = weight.shape[0], counts[0]
            out = torch.bmm(x.reshape(n, c * x.shape[1], x.shape[2]), weight.transpose(1, 2))
            return out.reshape(x.shape[0], x.shape[1], -1)
        per_row = weight.repeat_interleave(repeats, dim=0)  # [rows, out, in]
        return torch.bmm(x, per_row.transpose(1, 2))

    modules = [model.get_submodule(name.rsplit(".", 1)[0]) for name in lora_names]
    if any(module.bias is not None for module in modules):
        raise ValueError("task-batched LoRA expects adapter matrices without bias")
    with replaced_forwards([(module, batched.__get__(module)) for module in modules]):
        yield
