"""Shared fixtures: micro models built from a config (no download), in float64 where numbers matter."""

from __future__ import annotations

import pytest
import torch

from perk_cli.config import LoraSettings
from perk_cli.engine.batches import MetaTask, TokenBatch
from perk_cli.models.lora import attach_lora

VOCAB = 64


def micro_gpt2(dtype=torch.float64, n_layer: int = 2, seed: int = 0):
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=16, n_layer=n_layer, n_head=2,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype)
    model.requires_grad_(False)
    return model.eval()


def micro_llama(dtype=torch.float64, n_layer: int = 3, seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=n_layer,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype)
    model.requires_grad_(False)
    return model.eval()


def randomise_lora_b(peft_model, scale: float = 0.05, seed: int = 1) -> None:
    """PEFT starts B at zero; a non-zero B makes every LoRA tensor's gradient non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * scale)


def seeded_meta(peft_model, settings: dict, **overrides):
    """A MetaLearner with seeded init and a non-zero weighter output (so token weights matter)."""
    from perk_cli.config import InnerLoopSettings
    from perk_cli.engine.meta import MetaLearner

    torch.manual_seed(7)
    meta = MetaLearner(peft_model, InnerLoopSettings(**{**settings, **overrides}))
    with torch.no_grad():
        meta.weighter.net[2].weight.normal_(0, 0.5)
    return meta


def meta_grads(meta, task):
    """(meta-loss, inner result, gradients w.r.t. LoRA init, raw step sizes and weighter)."""
    loss, result = meta.meta_loss(task)
    targets = [*meta.lora_init().values(), meta.step_sizes.parameter, *meta.weighter.parameters()]
    return float(loss.detach()), result, torch.autograd.grad(loss, targets, allow_unused=True)


def random_batch(rows: int, width: int, seed: int, pad_first: int = 0, prefix: int = 2) -> TokenBatch:
    """Random ids; row 0 right-padded by `pad_first`; the first `prefix` tokens of a row are not targets."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (rows, width), generator=gen)
    attention = torch.ones(rows, width, dtype=torch.long)
    if pad_first:
        attention[0, width - pad_first:] = 0
        ids[0, width - pad_first:] = 0
    targets = torch.ones(rows, width, dtype=torch.bool)
    targets[:, :prefix] = False
    return TokenBatch(ids, attention, targets)


@pytest.fixture
def micro_task() -> MetaTask:
    return MetaTask(random_batch(4, 10, seed=2, pad_first=3), random_batch(1, 7, seed=3, prefix=4))


@pytest.fixture
def micro_peft():
    model = micro_gpt2()
    peft_model = attach_lora(model, LoraSettings(rank=2, alpha=4.0))
    randomise_lora_b(peft_model)
    return peft_model


REFERENCE = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "reference-data"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference data not found at {REFERENCE}")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `perk ARGS` in-process through the real entry point; (exit code, stdout, stderr)."""
    import sys

    from perk_cli.cli import main

    argv = sys.argv
    sys.argv = ["perk", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def prepared_qa1(tmp_path_factory, **sizes):
    """A small generated qa1 task directory (tiny tokenizer), for the training and evaluation tests."""
    from perk_cli.config import PrepareSettings
    from perk_cli.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "qa1"
    prepare(PrepareSettings(task="babi", subtask="qa1", facts=3, out=str(out), segment_tokens=32, **sizes))
    return out


def one_step_run(data, out):
    """A one-step run (rank-2 LoRA, K=1, tiny base trained) on a prepared task directory, into `out`: a
    checkpoint for the benchmark scripts' tests."""
    from perk_cli import __version__
    from perk_cli.config import InnerLoopSettings, LoraSettings, PromptSettings, RunConfig, TrainSettings
    from perk_cli.training.meta_train import meta_train

    config = RunConfig(perk_version=__version__, lora=LoraSettings(rank=2, alpha=4),
                       inner=InnerLoopSettings(steps=1), prompt=PromptSettings(segment_tokens=32),
                       train=TrainSettings(max_steps=1, tasks_per_batch=1, eval_tasks=1, train_base=True,
                                           baseline=False))
    meta_train(config, data, out)
    return out


def experiment_module(name: str):
    """A script of experiments/ imported as a module (its functions, without running main)."""
    import importlib
    import sys
    from pathlib import Path

    directory = str(Path(__file__).resolve().parents[1] / "experiments")
    sys.path.insert(0, directory)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(directory)


@pytest.fixture(scope="module")
def qa1(tmp_path_factory):
    """The qa1 task directory the meta-train and eval tests share (64 / 8 / 8 tasks, seed 5), made once a module;
    a module that needs another defines its own."""
    return prepared_qa1(tmp_path_factory, train=64, validation=8, test=8, seed=5)


def random_init_checkpoint(directory, seed: int = 5, prompt: dict | None = None, inner: dict | None = None):
    """A tiny-preset checkpoint in `directory` whose LoRA init has random B (N(0, 0.05)), so a memory written
    from it is not the base alone; `prompt` and `inner` set PromptSettings / InnerLoopSettings fields."""
    from perk_cli import __version__
    from perk_cli.checkpoint import build_runtime, save_checkpoint
    from perk_cli.config import InnerLoopSettings, LoraSettings, PromptSettings, RunConfig

    config = RunConfig(perk_version=__version__, lora=LoraSettings(rank=4, alpha=8),
                       inner=InnerLoopSettings(**(inner or {})), prompt=PromptSettings(**(prompt or {})))
    torch.manual_seed(seed)
    runtime = build_runtime(config)
    with torch.no_grad():
        for name, param in runtime.meta.lora_init().items():
            if ".lora_B." in name:
                param.normal_(0, 0.05)
    save_checkpoint(directory, config, runtime.state_tensors())
    return directory


def tiny_run_config(**train):
    """A run config those tests start from: a rank-4 LoRA, 2 inner steps, 6 outer steps of 4 tasks; `train`
    overrides TrainSettings fields."""
    from perk_cli import __version__
    from perk_cli.config import InnerLoopSettings, LoraSettings, PromptSettings, RunConfig, TrainSettings

    values = dict(max_steps=6, tasks_per_batch=4, eval_every=3, eval_tasks=8, lr=3e-3, warmup_steps=1,
                  train_base=True, seed=1)
    values.update(train)
    return RunConfig(perk_version=__version__, lora=LoraSettings(rank=4, alpha=8),
                     inner=InnerLoopSettings(lr_init=1e-2, steps=2, unroll_start=1),
                     prompt=PromptSettings(segment_tokens=32), train=TrainSettings(**values))
