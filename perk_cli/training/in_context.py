"""The in-context baseline (FT-ICR) every evaluation reports beside PERK: the same base with a LoRA
fine-tuned to answer with the whole context in its prompt, on PERK's training tasks, for the outer
steps PERK took, on PERK's learning-rate schedule, kept best-by-validation as PERK's best/ is.
Limited by the model's positions: a context that does not fit is a failure, not skipped, in eval.
`answer_truncated` is the reader that instead cuts a long document to the window (eval's base-truncated).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch

from perk_cli.config import RunConfig
from perk_cli.data.schema import Task
from perk_cli.engine.batches import TokenBatch
from perk_cli.engine.losses import answer_loss, answer_scores, functional_model_call
from perk_cli.scores import mean_forced_scores, mean_scores
from perk_cli.prompts import answer_question, decode_budget, encode_question
from perk_cli.errors import Interrupted as StoppedByUser
from perk_cli.checkpoint import (Runtime, build_runtime, load_optimizer_tensors, optimizer_tensors,
                                          read_checkpoint, save_checkpoint)
from perk_cli.training.outer import (NO_BEST, Interrupted, SaveClock, StopRequests, batch_indices, better, schedule_lr,
                                     validation_due)

IN_CONTEXT_DIR = "in-context"
WORK_DIR = "in-context-work"  # its last/ and best/ while it trains; removed once in-context/ is written


def in_context_batch(runtime: Runtime, task: Task, with_answer: bool = True) -> TokenBatch | None:
    """Context + question prompt (+ answer target); None when it (with room to answer) exceeds the
    model's positions."""
    prompt = runtime.config.prompt
    batch = encode_question(runtime.tokenizer, task.question, len(task.context), prompt,
                            task.answer if with_answer else None, task.support, context=task.context)
    room = 0 if with_answer else prompt.max_answer_tokens
    return None if batch.input_ids.shape[1] + room > runtime.max_positions else batch


def segments_in_window(runtime: Runtime, task: Task, room: int) -> int:
    """How many of the task's last segments fit the model's positions with the question prompt after them
    and `room` tokens left to answer: what a reader that cuts the document to its window keeps."""
    prompt, context = runtime.config.prompt, task.context

    def fits(kept: int) -> bool:
        ids = encode_question(runtime.tokenizer, task.question, kept, prompt,
                              context=context[len(context) - kept:]).input_ids
        return ids.shape[1] + room <= runtime.max_positions

    if fits(len(context)):
        return len(context)
    low, high = 0, len(context) - 1  # the answer lies in [low, high]; low may fit nothing but the question
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


@torch.no_grad()
def answer_truncated(runtime: Runtime, task: Task, budget: int,
                     answer_format: str | None = None) -> tuple[str, str, int]:
    """(answer, raw, segments read) with the document cut to the model's window: its last segments that fit
    with the question and room to answer, the story's most recent part (the first ones dropped)."""
    kept = segments_in_window(runtime, task, max(budget, runtime.config.prompt.max_answer_tokens))
    cut = task.model_copy(update={"context": task.context[len(task.context) - kept:]})
    answered = answer_in_context(runtime, cut, budget, answer_format)
    return (*answered, kept) if answered is not None else ("", "", 0)  # None: the question alone overflows


@torch.no_grad()
def answer_in_context(runtime: Runtime, task: Task, budget: int,
                      answer_format: str | None = None) -> tuple[str, str] | None:
    """(answer, raw) decoded greedily with the whole context in the prompt, as every method is decoded,
    read in the run's answer format or `answer_format`; None when the context does not fit the model's
    positions."""
    if in_context_batch(runtime, task, with_answer=False) is None:
        return None
    prompt = runtime.config.prompt
    if answer_format is not None:
        prompt = prompt.model_copy(update={"answer_format": answer_format})
    return answer_question(runtime.model, runtime.tokenizer, task.question, len(task.context), prompt,
                           max_new_tokens=budget, context=task.context)


def _loss(runtime: Runtime, batch: TokenBatch) -> torch.Tensor:
    return answer_loss(functional_model_call(runtime.model, {}), batch.to(runtime.device),
                       runtime.config.train.answer_weight)


@torch.no_grad()
def validate_in_context(runtime: Runtime, tasks: list[Task], budget: int) -> dict:
    """Answer loss and EM of the in-context LoRA on the tasks whose context fits the model's positions:
    decoded, or teacher-forced under `train.eval_decode` false (as PERK's validation)."""
    if not runtime.config.train.eval_decode:
        forced = []
        for batch in filter(None, (in_context_batch(runtime, task) for task in tasks)):
            loss, exact = answer_scores(functional_model_call(runtime.model, {}), batch.to(runtime.device),
                                        runtime.config.train.answer_weight)
            forced.append((bool(exact.all()), float(loss)))
        return mean_forced_scores(forced)
    scored = []
    for task in tasks:
        batch, answered = in_context_batch(runtime, task), answer_in_context(runtime, task, budget)
        if batch is not None and answered is not None:
            scored.append((answered[0], task.answer, float(_loss(runtime, batch))))
    return mean_scores(scored)


def _finished(out: Path, steps: int) -> bool:
    """Whether out/in-context holds the baseline trained for `steps` outer steps."""
    state = out / IN_CONTEXT_DIR / "trainer_state.json"
    if not (state.is_file() and (out / IN_CONTEXT_DIR / "meta.safetensors").is_file()):
        return False
    try:
        return json.loads(state.read_text()).get("step") == steps
    except json.JSONDecodeError:
        return False


def train_in_context(config: RunConfig, tasks: list[Task], out: Path,
                     on_step: Callable[[int, int, float], None] | None = None,
                     val_tasks: list[Task] | None = None, steps: int | None = None,
                     say: Callable[[str], None] | None = None) -> Path:
    """Fine-tune the in-context LoRA (and the base, when the run trains it) for `steps` outer steps
    (default max_steps), validating every `eval_every` steps and at the end; the weights with the best
    validation EM (then loss) are saved into `out/in-context`.

    Saved and resumed as PERK's run is: `out/in-context-work/last` (weights, optimiser, step) at every
    validation, every `save_minutes` and on a stop (Ctrl-C, SIGTERM: `Interrupted`), and `best` beside it;
    called again on the same run it continues from there, to the weights an uninterrupted run gives. A
    baseline already finished for `steps` is not trained again.
    """
    say = say or (lambda message: None)
    train = config.train
    steps = train.max_steps if steps is None else steps
    if _finished(out, steps):
        say(f"in-context baseline: already trained for {steps} steps in {out / IN_CONTEXT_DIR}")
        return out / IN_CONTEXT_DIR
    work = out / WORK_DIR
    torch.manual_seed(train.seed)
    runtime = build_runtime(config)
    params = list(runtime.meta.lora_init().values())
    if train.train_base:
        params += list(runtime.meta.base_parameters().values())
    optimizer = torch.optim.AdamW(params, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay)
    fitting = [t for t in tasks if in_context_batch(runtime, t) is not None]
    if not fitting:
        raise ValueError("no training task fits the model's positions with its context in the prompt")
    val_tasks = (val_tasks or [])[: train.eval_tasks]
    budget = decode_budget(runtime.tokenizer, val_tasks, config.prompt) if val_tasks else 0
    step, best = 0, dict(NO_BEST)
    last_state = work / "last" / "trainer_state.json"
    if last_state.is_file() and json.loads(last_state.read_text()).get("steps") == steps:
        files = read_checkpoint(work / "last")
        runtime.meta.load_trainable_state_dict({k: v.to(runtime.device) for k, v in files.tensors.items()})
        load_optimizer_tensors(optimizer, files.optimizer or {})
        step, best = files.trainer_state["step"], files.trainer_state["best"]
        say(f"in-context baseline: resuming at step {step} of {steps}")
    elif work.exists():
        shutil.rmtree(work)  # the work of a baseline for another step count: nothing to continue

    def save(name: str) -> None:
        save_checkpoint(work / name, config, runtime.state_tensors(), {"step": step, "steps": steps, "best": best},
                        optimizer_tensors(optimizer) if name == "last" else None)

    clock = SaveClock(train.save_minutes)
    with StopRequests(lambda: say("stopping the in-context baseline at the end of this step (saved there); "
                                  "interrupt again to stop now")) as stop:
        whole = True
        try:
            while step < steps:
                whole = False
                schedule_lr(optimizer, [train.lr], step, config)
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for index in batch_indices(step, train.tasks_per_batch, len(fitting), train.seed):
                    loss = _loss(runtime, in_context_batch(runtime, fitting[index]))
                    (loss / train.tasks_per_batch).backward()
                    total += float(loss.detach())
                torch.nn.utils.clip_grad_norm_(params, train.clip)
                optimizer.step()
                step += 1
                validated = bool(val_tasks) and validation_due(step, steps, train.eval_every)
                if validated:
                    metrics = validate_in_context(runtime, val_tasks, budget)
                    if better(metrics, best):
                        best = {**metrics, "step": step}
                        save("best")
                whole = True
                if validated or clock.due():
                    save("last")
                    clock.reset()
                if on_step:
                    on_step(step, steps, total / train.tasks_per_batch)
                if step < steps and stop.requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            if whole:
                save("last")
            if not (work / "last").is_dir():
                raise StoppedByUser(f"interrupted during the in-context baseline's step {step + 1}, before it was "
                                    "saved; resuming the run trains it from its start")
            saved_step = json.loads((work / "last" / "trainer_state.json").read_text())["step"]
            raise Interrupted(saved_step, work / "last")
    chosen = read_checkpoint(work / "best").tensors if val_tasks and (work / "best").is_dir() \
        else runtime.state_tensors()
    save_checkpoint(out / IN_CONTEXT_DIR, config, chosen,
                    {"step": steps, "fits": len(fitting), "best": best if val_tasks else None})
    shutil.rmtree(work, ignore_errors=True)
    return out / IN_CONTEXT_DIR


def has_in_context_baseline(run_dir: Path) -> bool:
    return (run_dir / IN_CONTEXT_DIR / "meta.safetensors").is_file()


def load_in_context(run_dir: Path) -> Runtime | None:
    """The in-context baseline a run trained, or None when it has none."""
    path = run_dir / IN_CONTEXT_DIR
    if not has_in_context_baseline(run_dir):
        return None
    files = read_checkpoint(path)
    return build_runtime(files.config, files.tensors, source=str(path))
