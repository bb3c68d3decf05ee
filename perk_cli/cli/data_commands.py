"""`perk prepare`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


from perk_cli.cli import render
from perk_cli.cli.common import app, out, json_option, quiet_option, config_option, progress
from perk_cli.cli.options import build_settings, given_settings, setting
from perk_cli.config import PrepareSettings


@app.command()
def prepare(
    task: str = setting(PrepareSettings, "task"),
    out_dir: Optional[Path] = setting(PrepareSettings, "out", "-o", "--out", help="Output directory."),
    input: Optional[Path] = setting(PrepareSettings, "input"),
    hub: Optional[str] = setting(PrepareSettings, "hub"),
    hub_config: Optional[str] = setting(PrepareSettings, "hub_config"),
    hub_split: Optional[str] = setting(PrepareSettings, "hub_split"),
    split: Optional[str] = setting(PrepareSettings, "split"),
    subtask: Optional[str] = setting(PrepareSettings, "subtask"),
    model: Optional[str] = setting(PrepareSettings, "model"),
    segment_tokens: Optional[int] = setting(PrepareSettings, "segment_tokens"),
    facts: Optional[int] = setting(PrepareSettings, "facts"),
    length: Optional[str] = setting(PrepareSettings, "length"),
    distractors: Optional[int] = setting(PrepareSettings, "distractors"),
    filler: Optional[str] = setting(PrepareSettings, "filler"),
    vocab: Optional[str] = setting(PrepareSettings, "vocab"),
    order_tags: Optional[str] = setting(PrepareSettings, "order_tags"),
    position: Optional[str] = setting(PrepareSettings, "position"),
    records: Optional[int] = setting(PrepareSettings, "records"),
    train: Optional[int] = setting(PrepareSettings, "train"),
    validation: Optional[int] = setting(PrepareSettings, "validation"),
    test: Optional[int] = setting(PrepareSettings, "test"),
    seed: Optional[int] = setting(PrepareSettings, "seed"),
    config: Optional[Path] = config_option("file of these settings"),
    json_output: bool = json_option("the summary"),
    quiet: bool = quiet_option(),
) -> None:
    """Turn task files, a Hub dataset, or generated tasks into a task directory.

    Example: perk prepare --task babi --subtask qa1 --length 512 -o data/qa1-512

    Generated splits each draw names and haystack documents from their own disjoint part, so the test
    split is made of names and prose the training never saw (--vocab closed --order-tags event
    --filler template is the layout of the shipped qa1-reader).
    """
    from perk_cli.prepare import prepare as run_prepare

    flags = given_settings(prepare, locals(), PrepareSettings)
    settings = build_settings(PrepareSettings, config, flags)
    with progress(quiet or json_output) as bar:
        handle = bar.add_task("preparing", total=None)
        summary = run_prepare(settings, lambda done, total: bar.update(handle, completed=done, total=total))
    if json_output:
        out.print_json(json.dumps(summary))
        return
    if not quiet:
        out.print(render.prepare_table(settings, summary))
