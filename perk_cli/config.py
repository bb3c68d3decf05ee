"""Pydantic settings for every part of perk: one validated source of truth, saved beside artifacts."""

from __future__ import annotations

import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def comma_list(value, convert, expected: str):
    """A flag's "a,b,c" as [convert(a), ...] (empty parts dropped); anything else unchanged."""
    if not isinstance(value, str):
        return value
    try:
        return [convert(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected {expected}, got {value!r}")


class _Settings(BaseModel):
    # nan and inf are refused wherever a number is read (a NaN learning rate would train on NaN silently)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSettings(_Settings):
    """Which base model to load and where to run it."""

    name: str = Field("tiny", description="Hub id, local directory, .gguf file, a perk base delta (.safetensors), "
                      "'smollm2', 'smollm2-reader' or 'tiny'.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto | cpu | cuda | mps.")
    dtype: Literal["auto", "float32", "bfloat16", "float64"] = Field(
        "auto", description="auto (float32) | float32 | bfloat16 | float64: the base model's weights."
    )
    attn_implementation: Literal["eager", "sdpa"] = Field(
        "eager", description="eager supports double backward; SDPA does not on CPU."
    )
    cache_dir: str | None = Field(
        None, description="Where a .gguf base is kept once converted to safetensors [$XDG_CACHE_HOME/perk or "
        "~/.cache/perk]."
    )


class LoraSettings(_Settings):
    """The memory's shape: a rank-r LoRA with rsLoRA scaling alpha/sqrt(r)."""

    rank: int = Field(16, ge=1, description="LoRA rank r.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; scaling is alpha/sqrt(r) (rsLoRA).")
    targets: list[str] | None = Field(
        None, description="Module names to adapt; None = all attention and MLP projections."
    )
    top_layers: int | None = Field(None, ge=1, description="Adapt only the top k layers.")


class InnerLoopSettings(_Settings):
    """Test-time learning: K steps of a functional optimiser on the weighted context loss."""

    steps: int = Field(4, ge=1, description="Inner steps K.")
    optimizer: Literal["sgd", "adam", "adamw"] = Field(
        "adamw", description="adam = L2 weight decay (torch.optim.Adam); adamw = decoupled."
    )
    lr_init: float = Field(1e-3, gt=0, description="Initial learned step size, every tensor and step.")
    lr_max: float | None = Field(
        1.0, gt=0, description="Cap on a learned step size (guards meta-training); None = no cap."
    )
    learn_lr: bool = Field(True, description="Meta-learn the step sizes (False: fixed lr_init).")
    step_size_space: Literal["log", "softplus"] = Field(
        "log", description="Step sizes are learned as log(eta) (an outer step moves eta by a factor, whatever its size); "
        "softplus is the former parameterisation, kept for ablations."
    )
    weight_decay: float = Field(0.0, ge=0, description="Inner optimiser's weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="Inner Adam betas.")
    eps: float = Field(1e-8, gt=0, description="Inner Adam epsilon.")
    unroll: Literal["second-order", "first-order", "truncated"] = Field(
        "truncated", description="How the meta-gradient flows through the inner steps: second-order | first-order | "
        "truncated."
    )
    unroll_start: int = Field(
        1, ge=0, description="Truncated: steps before this are first-order. 1 keeps step 0 (where B = 0 and "
        "A has no gradient) out of the second-order graph."
    )
    b_init_std: float = Field(
        1e-3, gt=0, description="When step 0 is unrolled (second-order, or unroll_start 0) an exactly-zero LoRA B "
        "starts from N(0, b_init_std) instead: at B = 0 Adam's update has slope lr/eps in the gradient."
    )
    weighting: bool = Field(True, description="Learn a per-token weight for the inner loss.")
    weighting_mode: Literal["coefficients", "legacy"] = Field(
        "coefficients", description="coefficients: the inner step descends sum_j w_j grad CE_j with w_j read "
        "from token j's own state and normalised to mean 1; legacy: the former rule (the weighted loss "
        "differentiated as a whole, w_j from the state before token j, unnormalised), kept for ablations."
    )
    max_tokens_per_group: int | None = Field(
        None, ge=1, description="Split segments into accumulation groups of at most this many tokens."
    )
    recency: float = Field(
        0.0, description="Later segments weigh more in the inner step: the tokens of segment k of N count "
        "exp(recency * (k / (N - 1) - 1/2)) times their weight (then normalised as always), so the last "
        "segment's weigh e^recency times the first's. 0 (the SPEC's inner loss): place plays no part. A later "
        "fact then outweighs an earlier one it replaces, where only the segments' order tells which is later."
    )
    engine: Literal["func", "higher"] = Field(
        "func", description="func: torch.func.functional_call; higher: the official code's library."
    )
    cache_prefix: bool = Field(
        True, description="Run the frozen layers below the lowest LoRA layer once per context group, not "
        "once per inner step (func engine; exact; costs tokens x hidden size of memory)."
    )

    @model_validator(mode="after")
    def _check(self) -> "InnerLoopSettings":
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas must lie in [0, 1)")
        if self.unroll == "truncated" and self.unroll_start > self.steps:
            raise ValueError(f"unroll_start ({self.unroll_start}) must be at most steps ({self.steps})")
        if self.lr_max is not None and self.lr_init > self.lr_max:
            raise ValueError(f"lr_init ({self.lr_init}) exceeds lr_max ({self.lr_max})")
        if self.engine == "higher" and self.unroll != "second-order":
            raise ValueError("engine 'higher' supports only unroll 'second-order'")
        if self.engine == "higher" and self.weighting and self.weighting_mode != "legacy":
            raise ValueError("engine 'higher' differentiates the weighted loss as a whole (the official code's "
                             "rule): use weighting off or weighting_mode 'legacy'")
        if self.recency and (self.engine == "higher" or self.weighting_mode == "legacy"):
            raise ValueError("recency weights the coefficients of the func engine's inner step: use engine "
                             "'func' with weighting_mode 'coefficients', or recency 0")
        if self.engine == "higher" and self.optimizer == "adamw" and self.weight_decay:
            raise ValueError("engine 'higher' has no AdamW; use optimizer 'adam' or weight_decay 0")
        return self


# Where tasks come from: files (or the Hub) in a published format, or a generator and its subtasks
# (the first subtask is a task name's default: `--task babi` means babi:qa1).
READERS = ("babilong", "student-records", "longgorilla", "jsonl")
SUBTASKS = {"babi": ("qa1", "qa2", "qa3"), "records": ("recall", "relation", "aggregate")}
MIX = "mix"
TASKS = READERS + tuple(SUBTASKS) + (MIX,)
# What `--task` accepts as a name: babi, babi:qa2, ..., records, records:relation, ...
TASK_NAMES = tuple(f"{family}:{sub}" if i else family for family, subs in SUBTASKS.items() for i, sub in enumerate(subs))


class PrepareSettings(_Settings):
    """How `perk prepare` builds a task directory (saved in its prepare.json)."""

    task: Literal[TASKS] = Field(
        description=f"Read {' | '.join(READERS)} files, generate {' | '.join(SUBTASKS)} tasks, or {MIX} "
        "prepared directories (--input A,B,...) into one, task by task."
    )
    out: str = Field(description="Output directory for train/validation/test.jsonl and prepare.json.")
    input: str | None = Field(None, description="File or directory of records (reader tasks); for --task mix, a "
                              "comma list of prepared task directories.")
    hub: str | None = Field(None, description="Hugging Face dataset id, e.g. RMT-team/babilong.")
    hub_config: str | None = Field(None, description="Hub dataset config, e.g. 1k.")
    hub_split: str | None = Field(None, description="Hub dataset split, e.g. qa1.")
    split: Literal["train", "validation", "test"] = Field("test", description="Split a single input file goes to.")
    subtask: str | None = Field(None, description="; ".join(f"{k}: {' | '.join(v)}" for k, v in SUBTASKS.items())
                                + " (default: the first).")
    model: str = Field("tiny", description="Tokenizer used to count tokens and cut plain text.")
    segment_tokens: int = Field(256, ge=1, description="Max tokens per segment when cutting text.")
    facts: int | None = Field(None, ge=1, description="babi: facts per story (default qa1 6, qa2 10, qa3 12).")
    length: int | list[int] | None = Field(
        None, description="Target context length in tokens; a comma list (128,512,1024) makes a mixture, task i of "
        "each split taking the (i mod n)-th length."
    )
    distractors: int = Field(0, ge=0, description="babi: filler sentences when --length is not given.")
    filler: str = Field(
        "prose", description="babi haystack: prose (Python's documentation, split by source: each split reads its "
        "own documents) | template (procedural sentences) | a .txt file or a directory of them."
    )
    vocab: Literal["open", "closed"] = Field(
        "open", description="Generated names, places and objects: open (thousands, split into disjoint train / "
        "validation / test parts, each split drawing from its own) | closed (the generator's ten people, nine rooms)."
    )
    order_tags: Literal["none", "event"] = Field(
        "none", description="babi: none (facts in story order, the BABILong layout) | event (each fact numbered, "
        "'Event 3: ...', the PERK paper's layout)."
    )
    position: Literal["uniform", "early", "middle", "late"] = Field(
        "uniform", description="babi: where the facts sit: uniform | early | middle | late."
    )
    records: int | None = Field(None, ge=1, description="records: students per database (default 20).")
    train: int = Field(200, ge=0, description="Generated training tasks.")
    validation: int = Field(50, ge=0, description="Generated validation tasks.")
    test: int = Field(100, ge=0, description="Generated test tasks.")
    seed: int = Field(0, description="Seed; the same seed gives byte-identical files.")

    @field_validator("length", mode="before")
    @classmethod
    def _lengths(cls, value):
        value = comma_list(value, int, "a length in tokens or a comma list of them")
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError("expected at least one length")
            value = value[0] if len(value) == 1 else list(value)
        for one in value if isinstance(value, list) else [value] if value is not None else []:
            if not isinstance(one, int) or one < 1:
                raise ValueError(f"lengths are whole numbers of tokens >= 1, got {one!r}")
        return value

    def length_of(self, index: int) -> int | None:
        """The target length of a split's task `index` (lists cycle)."""
        return self.length[index % len(self.length)] if isinstance(self.length, list) else self.length

    @model_validator(mode="after")
    def _check(self) -> "PrepareSettings":
        generator = self.task in SUBTASKS
        if generator:
            if self.subtask not in SUBTASKS[self.task]:
                raise ValueError(f"--subtask must be one of {', '.join(SUBTASKS[self.task])} for --task {self.task}")
            if self.train + self.validation + self.test == 0:
                raise ValueError("--train, --validation and --test are all 0: nothing to generate")
            if self.task == "records" and self.records is not None and self.length is not None:
                raise ValueError("give --records or --length, not both")
        elif self.task == MIX:
            if self.input is None or self.hub is not None:
                raise ValueError("--task mix joins prepared directories: give them as --input A,B,...")
            if len([p for p in self.input.split(",") if p.strip()]) < 2:
                raise ValueError("--task mix: --input needs at least two prepared directories, comma separated")
        else:
            if (self.input is None) == (self.hub is None):
                raise ValueError(f"--task {self.task} reads records: give exactly one of --input or --hub")
            if self.hub is not None and self.task != "babilong":
                raise ValueError("--hub is supported for --task babilong")
        return self


# The layout every figure before 2026-12-07 was made with, and the shipped qa1-reader was trained on.
GENERATOR_LAYOUT = {"vocab": "closed", "order_tags": "event", "filler": "template"}


def recite_marker(question_template: str) -> str:
    """The recite format's answer marker: the question template's text after its last field."""
    return question_template[question_template.rfind("}") + 1:]


class PromptSettings(_Settings):
    """How tasks become token sequences (saved in the checkpoint so adapt/ask/eval reuse it)."""

    segment_tokens: int = Field(256, ge=8, description="Max tokens per segment when cutting a plain document.")
    segment_prefix: str = Field("doc_{i}: ", description="Masked-out prefix of each segment; {i} = its id.")
    question_template: str = Field("You have memorized {n} documents.\n{question}\nAnswer:",
                                   description="The question prompt; {n} = the number of segments.")
    answer_format: Literal["plain", "support", "recite"] = Field(
        "plain", description="plain: ' {answer}'; support: '<support>facts</support>\\n<output>answer</output>'; "
        "recite: the facts one a line, the question prompt again, then ' {answer}' (the in-context reader's "
        "layout, with the recital as its context)."
    )
    max_answer_tokens: int = Field(64, ge=1, description="Cap on the target length (and on decoding).")
    segment_ids: Literal["shuffled", "ordered"] = Field(
        "shuffled", description="How meta-training numbers a task's segments: shuffled, a fresh random permutation "
        "(the SPEC's: ids say nothing of order); ordered, story order from a random offset (ids say which segment "
        "came later, never where the story starts). Test time numbers them 0..N-1 either way."
    )

    @field_validator("segment_prefix", "question_template")
    @classmethod
    def _known_fields(cls, value: str, info) -> str:
        allowed = {"segment_prefix": ("i",), "question_template": ("n", "question")}[info.field_name]
        try:
            fields = [name for _, name, spec, conversion in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"not a valid template ({exc}); write a literal brace as {{{{ or }}}}")
        unknown = [name for name in fields if name not in allowed]
        if unknown:
            raise ValueError(f"unknown field {{{unknown[0]}}}; the template may use only "
                             f"{', '.join('{' + a + '}' for a in allowed)} (a literal brace is {{{{ or }}}})")
        if info.field_name == "question_template" and "question" not in fields:
            raise ValueError("the template has no {question} field, so the question would never be asked")
        return value

    @model_validator(mode="after")
    def _recite_needs_a_marker(self) -> "PromptSettings":
        if self.answer_format == "recite" and not recite_marker(self.question_template).strip():
            raise ValueError("answer_format 'recite' reads the answer after the question template's text that "
                             "follows its last field (as '\\nAnswer:'); this template ends with a field")
        return self


class TrainSettings(_Settings):
    """The outer loop of `perk meta-train`."""

    max_steps: int = Field(200, ge=1, description="Outer (meta) steps.")
    epochs: float | None = Field(None, gt=0, description="Stop after this many passes over train (if sooner).")
    tasks_per_batch: int = Field(8, ge=1, description="Tasks per outer step (gradients accumulated).")
    tasks_per_forward: int = Field(
        1, ge=1, description="Tasks of an outer step that run as one batch through the inner loop, each with its "
        "own memory: the same numbers, fewer and larger model calls (2.0x the meta-steps per minute on the tiny "
        "preset at 8); peak memory grows with it. The higher engine and legacy weighting run tasks one by one.",
    )
    lr: float = Field(1e-4, gt=0, description="Outer AdamW learning rate.")
    step_size_lr: float | None = Field(
        1e-2, gt=0, description="Outer learning rate of the learned step sizes (None: lr). In log space this "
        "moves eta by up to a factor exp(step_size_lr) per step: 1e-2 lets it grow 10x in about 230 steps.",
    )
    weight_decay: float = Field(0.01, ge=0, description="Outer AdamW weight decay (matrices only).")
    betas: tuple[float, float] = Field((0.9, 0.95), description="Outer AdamW betas.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps.")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="cosine (to 10%) | constant, after warm-up.")
    clip: float = Field(1.0, gt=0, description="Gradient-norm clipping.")
    answer_weight: float = Field(
        1.0, gt=0, description="Weight of the answer's own tokens in the outer loss (and the in-context "
        "baseline's), which is the weighted mean over target tokens: in the support format, how much the answer "
        "counts against each token of the recited facts and tags. 1: every target token alike.")
    spike_factor: float | None = Field(
        20.0, gt=1, description="Skip a step whose gradient norm exceeds this x the running median."
    )
    max_minutes: float | None = Field(None, gt=0, description="Stop (validate and save) after this wall time.")
    save_minutes: float | None = Field(
        5.0, gt=0, description="Also save last/ when this many minutes have passed since it was last saved, so a "
        "crash loses at most that much training (last/ is always saved at validation and on a stop).")
    eval_every: int = Field(50, ge=1, description="Validate every N steps.")
    eval_tasks: int = Field(32, ge=1, description="Validation tasks per validation pass.")
    eval_decode: bool = Field(
        True, description="Validation EM of greedily decoded answers. False: teacher-forced EM, with no decoding: "
        "a task counts when every target token (support facts and eos included) is the top token given the target "
        "before it, i.e. when greedy decoding would reproduce the target exactly. A lower bound on the decoded EM "
        "that costs one forward pass instead of a decode.")
    split_writes: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of training tasks written into the memory in two calls, as "
        "`perk adapt --into` grows one: the first rows from the LoRA init, the rest (cut at a random row) from the "
        "memory the first call left, at the grown memory's step-size scale; the outer loss asks about either part.")
    train_base: bool = Field(False, description="Also train the base model (only sensible for 'tiny').")
    baseline: bool = Field(True, description="Also train the in-context baseline LoRA into the run.")
    seed: int = Field(0, description="Seed of the initialisation and the data order.")
    init_from: str | None = Field(
        None, description="Start from this checkpoint's meta-parameters (LoRA init, step sizes, token weighter; a "
        "run directory means its best/) instead of a fresh initialisation, with a fresh outer optimiser from step "
        "0: the next stage of a curriculum. The run takes the checkpoint's model, LoRA, inner-loop and prompt "
        "settings, except prompt.answer_format and prompt.max_answer_tokens, which it may set.",
    )


class RunConfig(_Settings):
    """Everything a checkpoint needs to be rebuilt: saved as config.json in every checkpoint."""

    perk_version: str
    model: ModelSettings = ModelSettings()
    lora: LoraSettings = LoraSettings()
    inner: InnerLoopSettings = InnerLoopSettings()
    prompt: PromptSettings = PromptSettings()
    train: TrainSettings = TrainSettings()
    task: str | None = Field(None, description="Task directory it was trained on.")

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        if self.train.split_writes and self.inner.engine == "higher":
            raise ValueError("train.split_writes: the higher engine always starts from the LoRA init; use engine "
                             "'func'")
        return self


class EvalSettings(_Settings):
    """`perk eval`: PERK and its baselines on one split of a task directory."""

    checkpoint: str = Field(description="Run or checkpoint directory from meta-train.")
    task: str = Field(description="Task directory from `perk prepare`.")
    split: Literal["train", "validation", "test"] = Field("test", description="train | validation | test.")
    out: str | None = Field(None, description="Output directory.")
    limit: int | None = Field(None, ge=1, description="Evaluate a seeded subsample of this many tasks.")
    seed: int = Field(0, description="Seed of the subsample and of plain TTT's initialisation.")
    baselines: list[Literal["in-context", "plain-ttt", "base", "base-truncated"]] = Field(
        ["in-context", "plain-ttt"], description="Baselines beside PERK: comma list of in-context (the run's "
        "fine-tuned in-context LoRA), plain-ttt, base (the base model itself, adapter off, the context in its "
        "prompt: the reference for a base that already reads), base-truncated (that base reading the "
        "document's last segments that fit its window, where base fails a document too long); '' for none."
    )
    plain_lr: float | None = Field(
        None, gt=0, description="Plain TTT's learning rate; None = the best of plain_lr_grid on the validation split."
    )
    plain_lr_grid: list[float] = Field(
        [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], min_length=1,
        description="Learning rates plain TTT is tuned over: a comma list (1e-3,1e-2,3e-2)."
    )
    plain_lr_tasks: int = Field(16, ge=1, description="Validation tasks that tune plain TTT's learning rate.")
    max_tokens_per_group: int = Field(4096, ge=1, description="Tokens per accumulation group: bounds peak memory.")
    max_new_tokens: int | None = Field(None, ge=1, description="Decoding budget (default: the checkpoint's answer cap).")
    model: str | None = Field(None, description="Override the checkpoint's base model path.")
    inner_steps: int | None = Field(
        None, ge=1, description="PERK's inner steps at test time in place of the checkpoint's trained count (more can "
        "help documents far longer than it trained on); those past it take added_lr."
    )
    added_lr: float = Field(1e-3, gt=0, description="Size of the inner steps inner_steps adds past the trained count.")
    perk: bool = Field(True, description="Score PERK; off, the baselines alone (to set beside an earlier "
                       "evaluation's PERK on the same tasks without adapting again: perk compare).")

    @field_validator("plain_lr_grid", mode="before")
    @classmethod
    def _grid(cls, value):
        value = comma_list(value, float, "a comma list of learning rates")
        if isinstance(value, list) and any(isinstance(lr, (int, float)) and lr <= 0 for lr in value):
            raise ValueError(f"learning rates are > 0, got {value}")
        return value


READING_SUBTASKS = ("qa1", "qa2", "qa3", "recall")
BABI_FACTS = {"qa1": 4, "qa2": 6, "qa3": 8}  # a reading base's bAbI stories: facts a story


class ReadingBaseSettings(_Settings):
    """`perk reading-base`: fine-tune a base to answer from its prompt (stage 1: PERK presupposes it)."""

    model: str = Field("smollm2", description="The base to fine-tune: a --model spec (a directory continues a "
                       "saved reading base).")
    out: str = Field("runs/reading-base", description="Writes <out>/model, <out>/reading_base.json and <out>/data.")
    task: str | None = Field(None, description="A task directory from perk prepare: train on its train split and gate "
                             "on its validation split (test if it has none), in place of the generated sets of --subtasks.")
    subtasks: list[Literal[READING_SUBTASKS]] = Field(
        ["qa1"], min_length=1, description="Comma list of what it learns to read and is gated on: bAbI qa1 (4 facts), "
        "qa2 (6), qa3 (8), recall (student records: 3 and 6 a database in training, 6 and 12 held out).")
    steps: int = Field(60, ge=1, description="Optimiser steps.")
    tasks_per_step: int = Field(8, ge=1, description="Tasks a step.")
    lr: float = Field(3e-5, gt=0, description="AdamW learning rate (all parameters).")
    train_tasks: int = Field(1000, ge=1, description="Training tasks a set (a subtask has one set a size).")
    test_tasks: int = Field(60, ge=1, description="Held-out tasks a set: the gate.")
    seed: int = Field(0, description="Orders the batches; continuing a saved base on the same data needs a new one.")
    pool: int = Field(0, ge=0, description="Training stories from fresh seeds (the first pool's + 1000 N), for a base "
                      "continued past its pool; the held-out sets stay.")
    hard_share: float = Field(0.0, ge=0, le=1, description="Share of each step's tasks drawn from the qa2 stories whose "
                              "object was put down before its dropper moved on (the case readers miss).")
    recite_share: float = Field(0.0, ge=0, le=1, description="Share of each step's bAbI tasks laid out as PERK's recite "
                                "format reads them (the gold events one a line, the question again, the answer).")
    bf16: bool = Field(True, description="bfloat16 autocast for the matmuls (weights and optimiser stay float32).")
    delta_rank: int | None = Field(None, ge=1, description="Also save the base as a rank-R difference from "
                                   "delta_from (<out>/reader-rR.safetensors, a few MB; --model loads it).")
    delta_from: str = Field("smollm2", description="The full base the delta is a difference from (where the "
                            "fine-tuning began, or that model's own source).")

    @field_validator("subtasks", mode="before")
    @classmethod
    def _subtasks(cls, value):
        parts = comma_list(value, str.strip, "a comma list of subtasks")
        if isinstance(parts, list) and any(part not in READING_SUBTASKS for part in parts):
            raise ValueError(f"expected a comma list of {', '.join(READING_SUBTASKS)}, got {value!r}")
        return parts

    @model_validator(mode="after")
    def _check(self) -> "ReadingBaseSettings":
        if self.recite_share > 0 and not any(s in BABI_FACTS for s in self.subtasks):
            raise ValueError(f"--recite-share: needs a bAbI subtask ({', '.join(BABI_FACTS)}) in --subtasks")
        if self.task is not None and (self.recite_share > 0 or self.hard_share > 0 or self.pool > 0):
            raise ValueError("--task: trains on that directory's own tasks; --recite-share, --hard-share and --pool "
                             "choose among the generated sets, so leave them out")
        if self.hard_share > 0 and "qa2" not in self.subtasks:
            raise ValueError("--hard-share: the dropped-then-moved stories are qa2's; add qa2 to --subtasks "
                             + ",".join(self.subtasks))
        return self


REPRODUCE_FAMILIES = ("recall", "qa1", "qa2")


class ReproduceSettings(_Settings):
    """`perk reproduce`: every method trained and evaluated at 1x, 2x, 4x and 8x the training length."""

    recipe: str | None = Field(None, description="Truncated PERK as a multi-stage recipe: qa1-reader (the shipped "
                               "checkpoint's) or a recipe.json; it fixes the family, base, length and segments.")
    family: Literal[REPRODUCE_FAMILIES] | None = Field(None, description="recall | qa1 | qa2.")
    model: str = Field("smollm2", description="Base whose LoRA and (tiny) weights are meta-trained, when no --base.")
    base: str | None = Field(None, description="A base that reads, used frozen instead of --model: smollm2-reader, a "
                             "delta file or a directory from perk reading-base; the in-context reference is then the "
                             "base with the context in its prompt.")
    out: str = Field("runs/repro", description="Run folder: data, every run, evaluations, results.json, the plot.")
    minutes: float = Field(30.0, gt=0, description="Truncated PERK's training budget.")
    steps: int | None = Field(None, ge=1, description="Truncated PERK's outer steps (instead of --minutes).")
    length: int | None = Field(None, ge=1, description="Training length (1x) in tokens, babi families.")
    segment_tokens: int | None = Field(None, ge=1, description="Tokens a segment.")
    curriculum: list[int] | None = Field(None, description="Comma list of lengths: a second stage from truncated "
                                         "PERK's best/ on a mixture of them (e.g. 128,512,1024), its own row.")
    curriculum_steps: int = Field(80, ge=1, description="Outer steps of the curriculum stage.")
    test_tasks: int = Field(20, ge=1, description="Held-out tasks a length.")
    train_tasks: int = Field(2000, ge=1, description="Training tasks at 1x.")
    validation_tasks: int = Field(16, ge=1, description="Validation tasks that choose each run's best/.")
    max_new_tokens: int | None = Field(None, ge=1, description="Decoding cap at evaluation.")
    eval_forced: bool = Field(False, description="Validate by teacher-forced exact match (no decoding).")
    answer_format: Literal["plain", "support", "recite"] = Field("plain", description="plain | support | recite (the "
                                                                 "outer loss's target).")
    top_layers: int = Field(4, ge=1, description="LoRA on the top k layers.")
    inner_steps: int = Field(2, ge=1, description="Inner steps K.")
    lr: float = Field(1e-3, gt=0, description="Outer learning rate.")
    step_size_lr: float = Field(1e-2, gt=0, description="Outer learning rate of the step sizes.")
    tasks_per_batch: int = Field(4, ge=1, description="Tasks an outer step.")
    tasks_per_forward: int = Field(1, ge=1, description="Tasks batched in one forward.")
    answer_weight: float = Field(1.0, gt=0, description="Weight of the answer's own tokens in the outer loss.")

    @field_validator("curriculum", mode="before")
    @classmethod
    def _lengths(cls, value):
        return comma_list(value, int, "a comma list of lengths in tokens")
