"""The tables the commands print (rich): what prepare wrote, what eval measured, the demo's summary."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from perk_cli.config import EvalSettings, PrepareSettings

METHOD_NAMES = {"perk": "PERK", "in-context": "in-context (FT-ICR)", "plain-ttt": "plain test-time training",
                "base": "base, context in prompt", "base-truncated": "base, context cut to its window"}


def prepare_table(settings: PrepareSettings, summary: dict) -> Table:
    """Tasks and token lengths per split of a prepared directory."""
    table = Table(title=f"{settings.out}  ({summary['source']})")
    for column in ("split", "tasks", "min tokens", "mean tokens", "max tokens"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split_name, count in summary["counts"].items():
        lengths = summary["length_tokens"][split_name]
        table.add_row(split_name, str(count), str(lengths["min"]), str(lengths["mean"]), str(lengths["max"]))
    return table


def eval_table(settings: EvalSettings, report: dict) -> Table:
    """EM and F1 per method, EM by context-length bucket and (in a mixture) by family, and the failures."""
    table = Table(title=escape(f"{settings.task} [{settings.split}], {report['n_tasks']} tasks"))
    buckets = sorted({b for m in report["methods"].values() for b in m["by_length"]},
                     key=lambda b: (b == "unknown", int(b) if b.isdigit() else 0))
    families = sorted({f for m in report["methods"].values() for f in m.get("by_family", {})})
    families = families if len(families) > 1 else []
    for column in ["method", "EM", "F1", *[f"EM@{b}" for b in buckets], *[escape(f) for f in families], "failures"]:
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, m in report["methods"].items():
        table.add_row(method, f"{m['em']:.3f}", f"{m['f1']:.3f}",
                      *[f"{m['by_length'][b]['em']:.3f}" if b in m["by_length"] else "-" for b in buckets],
                      *[f"{m['by_family'][f]['em']:.3f}" if f in m["by_family"] else "-" for f in families],
                      str(m["failures"]))
    return table


def demo_table(result, test_tasks: int) -> Table:
    """The demo's EM by method and length, beside chance."""
    table = Table(title=f"qa1 exact match, {test_tasks} held-out tasks per length")
    table.add_column("method")
    for length in result.lengths:
        label = "training length" if length == result.lengths[0] else f"{length // result.lengths[0]}x"
        table.add_column(f"{length} tokens ({label})", justify="right")
    for method, name in METHOD_NAMES.items():
        if method in result.em:
            table.add_row(name, *[f"{result.em[method].get(n, float('nan')):.3f}" for n in result.lengths])
    if not result.references:  # the story-aware chance below replaces the blind one
        table.add_row("chance (1 of 9 places)", *[f"{result.chance:.3f}" for _ in result.lengths])
    for name, label in (("chance", "chance (1 of the story's places)"),
                        ("first mention of the person", "the person's first place"),
                        ("last place in the story", "the story's last place")):
        if all(name in result.references.get(n, {}) for n in result.lengths):
            table.add_row(label, *[f"{result.references[n][name]:.3f}" for n in result.lengths])
    return table


def recipe_table(recipe, stages: list[dict]) -> Table:
    """Each stage of a finished recipe: what it is, its steps, and its validation figure."""
    table = Table(title=f"recipe {escape(recipe.name)}")
    for column in ("stage", "kind", "steps", "validation"):
        table.add_column(column)
    for stage in stages:
        if "gate" in stage:
            figure = ", ".join(f"in-context EM {em:.3f}" for em in stage["gate"].values())
            kind = "reading base"
        else:
            best = stage["best"]
            figure = f"EM {best['val_em']:.3f}, loss {best['val_loss']:.4f} (step {best['step']})"
            kind = "meta-training"
        table.add_row(escape(stage["name"]), kind, str(stage["steps"]), figure)
    return table


def recipes_table(recipes: dict) -> Table:
    table = Table(title="recipes (perk recipe NAME -o OUT)")
    for column in ("name", "stages", "minutes on 2 CPU cores", "what it makes"):
        table.add_column(column)
    for name, make in recipes.items():
        recipe = make()
        table.add_row(escape(name), str(len(recipe.stages)), f"{recipe.minutes:.0f}", escape(recipe.description))
    return table
