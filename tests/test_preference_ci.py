"""Paired before/after figures of the reward and rejection-sampling stages, hand-computed: the reward model's
pairwise accuracy on held-out rankings and the policy's mean reward on held-out prompts, each with a paired
bootstrap CI over the held-out items (rankings, prompts)."""

from __future__ import annotations

import pytest

from hypnos.eval.report import preference_results


def test_reward_change_is_after_minus_before_per_prompt_with_a_ci_over_prompts():
    from hypnos.train.rejection_sampling import paired_change

    before = [[0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]]   # prompt means 1.0, 1.0, -0.5
    after = [[2.0, 2.0], [1.0, 2.0], [0.0, 0.0]]     # prompt means 2.0, 1.5, 0.0 -> differences 1.0, 0.5, 0.5
    out = paired_change(before, after, seed=0)
    assert out["n"] == 3 and out["difference"] == pytest.approx(2 / 3, abs=1e-4)
    assert 0.5 <= out["ci"][0] <= out["difference"] <= out["ci"][1] <= 1.0  # resampled means of {1, .5, .5}
    # the same answers both times: no change, a zero-width interval
    same = paired_change(before, before)
    assert same["difference"] == 0 and same["ci"] == [0, 0]
    with pytest.raises(ValueError):
        paired_change(before, after[:2])  # unpaired prompts are an error, not a silently shorter mean


def test_accuracy_change_pools_pairs_over_rankings_with_a_ci_over_rankings():
    from hypnos.train.reward import accuracy_change

    # (pairs in order, pairs) per held-out ranking, before and after training
    before = [(1, 6), (3, 6), (0, 3)]
    after = [(6, 6), (5, 6), (1, 3)]
    out = accuracy_change(before, after, seed=0)
    assert out["before"] == pytest.approx(4 / 15, abs=1e-4) and out["after"] == pytest.approx(12 / 15, abs=1e-4)
    assert out["difference"] == pytest.approx(8 / 15, abs=1e-4) and out["n"] == 3
    assert 0 < out["ci"][0] <= out["difference"] <= out["ci"][1] <= 1  # every ranking improved
    assert accuracy_change([], [])["difference"] is None


def test_report_rows_carry_the_paired_differences():
    manifests = [
        {"stage": "reward", "kind": "reward", "counts": {"heldout_records": 9},
         "metrics": {"heldout_accuracy_before": 0.5, "heldout_accuracy_after": 0.9,
                     "heldout_accuracy_change": {"difference": 0.4, "ci": [0.2, 0.6], "n": 9}}},
        {"stage": "rs", "kind": "rejection_sampling", "counts": {},
         "metrics": {"heldout_prompts": 4, "mean_reward_before": -0.1, "mean_reward_after": 0.3,
                     "mean_reward_change": {"difference": 0.4, "ci": [-0.1, 0.9], "n": 4}}},
    ]
    rows = {r["stage"]: r for r in preference_results(manifests)}
    assert rows["reward"]["difference"] == 0.4 and rows["reward"]["ci"] == [0.2, 0.6]
    assert rows["rs"]["difference"] == 0.4 and rows["rs"]["ci"] == [-0.1, 0.9]
