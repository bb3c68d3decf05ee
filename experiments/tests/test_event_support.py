"""experiments/event_support.py: the support becomes the story's events, in order; a misfit directory is refused."""

import json
import re
import subprocess
import sys
from pathlib import Path

from perk_cli.config import GENERATOR_LAYOUT, PrepareSettings
from perk_cli.prepare import prepare
from perk_cli.data.segment import split_sentences

SCRIPT = Path(__file__).resolve().parents[1] / "event_support.py"


def _one_sentence_a_segment(directory: Path) -> None:
    # What --segment-tokens 16 makes with SmolLM2's tokenizer; the tiny test tokenizer cuts sentences.
    for path in directory.glob("*.jsonl"):
        tasks = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**t, "context": [s for c in t["context"] for s in split_sentences(c)]})
                                + "\n" for t in tasks))


def test_the_support_becomes_every_event_in_order(tmp_path):
    source, out = tmp_path / "qa2", tmp_path / "qa2-ev"
    prepare(PrepareSettings(task="babi", subtask="qa2", facts=5, length=160, train=6, validation=0, test=3,
                            seed=4, out=str(source), **GENERATOR_LAYOUT))
    _one_sentence_a_segment(source)
    done = subprocess.run([sys.executable, str(SCRIPT), str(source), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    info, source_info = (json.loads((d / "prepare.json").read_text()) for d in (out, source))
    assert info == {**source_info, "support": f"every event, by experiments/event_support.py from {source}"}
    for split in ("train", "test"):
        before = [json.loads(line) for line in (source / f"{split}.jsonl").read_text().splitlines()]
        after = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        assert len(after) == len(before) > 0
        for old, new in zip(before, after):
            assert {k: v for k, v in new.items() if k != "support"} == {k: v for k, v in old.items() if k != "support"}
            numbers = [int(re.match(r"Event (\d+): ", s)[1]) for s in new["support"]]
            assert numbers == list(range(5))  # all five events, in story order
            assert set(old["support"]) <= set(new["support"])
    done = subprocess.run([sys.executable, str(SCRIPT), str(source), str(out)], capture_output=True, text=True)
    assert done.returncode == 2 and "exists" in done.stderr.strip().splitlines()[-1]


def test_a_directory_whose_segments_hold_several_events_is_refused(tmp_path):
    source = tmp_path / "qa2"
    prepare(PrepareSettings(task="babi", subtask="qa2", facts=5, length=160, segment_tokens=32, train=3,
                            validation=0, test=0, seed=4, out=str(source), **GENERATOR_LAYOUT))  # a segment holds two events
    done = subprocess.run([sys.executable, str(SCRIPT), str(source), str(tmp_path / "ev")], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "--segment-tokens 16" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "ev").exists()  # nothing written
