"""perk_cli.scores: exact match and token F1 against hand-computed values."""

import pytest

from perk_cli.scores import exact_match, normalize, token_f1


@pytest.mark.parametrize("prediction, gold, em, f1", [
    ("The kitchen.", "kitchen", 1.0, 1.0),
    ("the garden", "kitchen", 0.0, 0.0),
    ("Computer Science", "computer  science!", 1.0, 1.0),
    ("kitchen kitchen", "kitchen", 0.0, 2 * (1 / 2) * 1 / (1 / 2 + 1)),  # counts: precision 1/2, recall 1
    ("x b c", "b c d", 0.0, 2 / 3),
    ("a b c", "b c d", 0.0, 0.8),  # the article "a" is dropped: precision 1, recall 2/3
    ("", "kitchen", 0.0, 0.0),
])
def test_metrics_against_hand_computed_values(prediction, gold, em, f1):
    assert exact_match(prediction, gold) == em
    assert token_f1(prediction, gold) == pytest.approx(f1)
    assert normalize("  An  Apple, the PIE! ") == "apple pie"


def test_summaries_count_each_family_of_a_mixture_apart():
    from perk_cli.scores import summarise

    def row(family, correct, **extra):
        return {"method": "perk", "correct": correct, "f1": float(correct), "length_bucket": "1024",
                "position_bucket": "early", **({"family": family} if family else {}), **extra}

    rows = [row("babi/qa1", 1.0), row("babi/qa1", 0.0), row("babi/qa2", 1.0), row("records/recall", 0.0),
            row(None, 1.0)]  # a row written before families were recorded
    summary = summarise(rows)["perk"]
    assert summary["n"] == 5 and summary["em"] == pytest.approx(0.6)
    assert summary["by_family"] == {"babi/qa1": {"n": 2, "em": 0.5}, "babi/qa2": {"n": 1, "em": 1.0},
                                    "records/recall": {"n": 1, "em": 0.0}, "unknown": {"n": 1, "em": 1.0}}
