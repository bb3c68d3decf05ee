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
