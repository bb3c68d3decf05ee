"""A base shipped as its difference from another base: a few MB instead of a whole model.

A fully fine-tuned SmolLM2-135M that reads (perk reading-base) is 538 MB; the GGUF it was
tuned from ships in a pip package. What it learned is stored here as the difference, each weight
matrix's by its top singular directions (a @ b, float16) and each vector's whole (float32), in one
safetensors file whose metadata names the base it applies to. `--model FILE.safetensors` loads that
base and adds the difference; `perk_cli.models.base` does this for any delta file, and the
`smollm2-reader` preset is the one this package ships.

    tensors, report = make_delta(base_model, tuned_model, rank=32)
    save_delta(Path("reader.safetensors"), tensors, base="smollm2", rank=32, report=report)
    apply_delta(load_base(ModelSettings(name="smollm2"))[0], Path("reader.safetensors"))

Truncating a full fine-tune to a rank changes the model: `report` holds each matrix's relative
error, and a shipped delta is measured again (in-context EM on held-out tasks) as the model it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from perk_cli.errors import PerkError
from perk_cli.files import staged_file

FORMAT = "perk-base-delta/1"


def _parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters by name, a tied tensor once (named_parameters skips the second name)."""
    return {name: param for name, param in model.named_parameters()}


def low_rank(diff: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(a, b, relative Frobenius error) with a @ b the best rank-`rank` approximation of `diff`
    (Eckart-Young); the singular values are split evenly between a and b so both stay O(sqrt(s))."""
    u, s, vh = torch.linalg.svd(diff.double(), full_matrices=False)
    rank = min(rank, s.numel())
    root = s[:rank].sqrt()
    a, b = u[:, :rank] * root, root[:, None] * vh[:rank]
    total = float(s.square().sum())
    error = (float(s[rank:].square().sum()) / total) ** 0.5 if total > 0 else 0.0
    return a.float(), b.float(), error


def make_delta(base: torch.nn.Module, tuned: torch.nn.Module, rank: int) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a delta file (NAME.a / NAME.b for a matrix, NAME.full for a vector; unchanged
    tensors are left out) and a report {NAME: relative error of its stored difference}."""
    if rank < 1:
        raise PerkError(f"--rank {rank}: must be at least 1")
    base_params, tuned_params = _parameters(base), _parameters(tuned)
    if base_params.keys() != tuned_params.keys():
        missing = sorted(base_params.keys() ^ tuned_params.keys())[:2]
        raise PerkError(f"the tuned model does not have the base's parameters (differ: {missing})")
    tensors, report = {}, {}
    for name, tuned_param in tuned_params.items():
        base_param = base_params[name]
        if base_param.shape != tuned_param.shape:
            raise PerkError(f"{name}: shape {tuple(tuned_param.shape)} in the tuned model, "
                            f"{tuple(base_param.shape)} in the base")
        diff = tuned_param.detach().float() - base_param.detach().float()
        if not diff.any():
            continue
        if diff.ndim == 2 and rank < min(diff.shape):
            a, b, error = low_rank(diff, rank)
            tensors[f"{name}.a"], tensors[f"{name}.b"] = a.half().contiguous(), b.half().contiguous()
            # float16 rounding of the factors is part of what ships: measure the stored product
            stored = tensors[f"{name}.a"].float() @ tensors[f"{name}.b"].float()
            error = float((stored - diff).norm() / diff.norm())
        else:
            tensors[f"{name}.full"] = diff.contiguous()
            error = 0.0
        report[name] = round(error, 6)
    return tensors, report


def save_delta(path: Path, tensors: dict[str, torch.Tensor], base: str, rank: int, report: dict,
               note: str = "") -> None:
    """Write a delta file atomically; its metadata names the base (a --model spec) it applies to."""
    from safetensors.torch import save_file

    metadata = {"format": FORMAT, "base": base, "rank": str(rank), "report": json.dumps(report), "note": note}
    with staged_file(Path(path)) as staging:
        save_file(tensors, str(staging), metadata=metadata)


def read_delta_metadata(path: Path) -> dict | None:
    """A delta file's metadata, or None when `path` is a safetensors file of another kind."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise PerkError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})")
    return metadata if metadata.get("format") == FORMAT else None


def apply_delta(model: torch.nn.Module, path: Path) -> None:
    """Add a delta file's differences to `model`'s parameters in place (float32 arithmetic)."""
    from safetensors.torch import load_file

    params = _parameters(model)
    stored = load_file(str(path))
    names = {key.rsplit(".", 1)[0] for key in stored}
    unknown = sorted(names - params.keys())
    if unknown:
        raise PerkError(f"{path}: a delta for another model (it changes {unknown[0]!r}, which this base lacks)")
    with torch.no_grad():
        for name in sorted(names):
            param = params[name]
            if f"{name}.full" in stored:
                diff = stored[f"{name}.full"].float()
            else:
                diff = stored[f"{name}.a"].float() @ stored[f"{name}.b"].float()
            if diff.shape != param.shape:
                raise PerkError(f"{path}: {name} is {tuple(diff.shape)} in the delta, {tuple(param.shape)} in the base")
            param.copy_((param.float() + diff).to(param.dtype))
