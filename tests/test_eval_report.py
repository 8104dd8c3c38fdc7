"""Report glitches (issue item 8): consistent ROUGE-L scale, honest Likert bars, models without a score kept,
judge headline = win rate, chance line on accuracy charts, scoring method shown."""

from __future__ import annotations

import math

import matplotlib
import pytest

from hypnos.eval import report

matplotlib.use("Agg")

RESULTS = {
    "models": {"base": "b", "sft": "s", "api": "endpoint"},
    "tasks": {"mcq": {"output_type": "multiple_choice"}, "qa": {"output_type": "generate_until"},
              "cases": {"output_type": "judge"}, "att": {"output_type": "likert"}},
    "scores": {
        "mcq": {"base": {"accuracy": 0.3, "ci": [0.2, 0.4], "chance": 0.25, "method": "loglik"},
                "api": {"accuracy": 0.5, "ci": [0.4, 0.6], "chance": 0.25, "method": "generation"}},  # sft missing
        "qa": {m: {"rougeL": 0.25, "rougeL_ci": [0.2, 0.3], "rougeL_items": [0.2, 0.3]} for m in ("base", "sft", "api")},
        "cases": {m: {"rougeL": 0.9, "rougeL_ci": [0.8, 1.0]} for m in ("base", "sft", "api")},
        "att": {m: {"total": 3.2, "points": 5, "ci": None} for m in ("base", "sft", "api")}},
    "judge": {"cases": {"sft vs base": {"criteria": {"usefulness": {"rates": {
        "win": {"mean": 0.6, "ci": [0.4, 0.8]}, "tie": {"mean": 0.1, "ci": [0, 0.2]},
        "loss": {"mean": 0.3, "ci": [0.1, 0.5]}}}}}}},
}


def test_headline_cells():
    cols, rows = report.headline_table(RESULTS)
    assert cols[1] == "qa (ROUGE-L 0–1)" and rows["base"][1] == "0.250 [0.200, 0.300]"  # same 0-1 scale as box plots
    assert rows["sft"][2] == "60.0 [40.0, 80.0] vs base" and rows["base"][2] == "30.0 [10.0, 50.0] vs sft"
    assert rows["api"][2] == "–"  # not judged: no ROUGE-L posing as the judge result
    assert rows["api"][0].endswith("(gen)") and not rows["base"][0].endswith(")") and rows["sft"][0] == "–"


def test_bars_keep_missing_models_and_draw_chance():
    fig = report.bar_figure("mcq", RESULTS["tasks"]["mcq"], RESULTS["scores"]["mcq"], list(RESULTS["models"]))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "sft", "api"]
    assert any(t.get_text() == "no score" for t in ax.texts)
    assert any(line.get_ydata()[0] == pytest.approx(25) for line in ax.lines)  # chance line at 25%
    assert ax.get_ylim() == (0, 100)


def test_likert_bars_start_at_one_and_claim_no_interval():
    fig = report.bar_figure("att", RESULTS["tasks"]["att"], RESULTS["scores"]["att"], list(RESULTS["models"]))
    ax = fig.axes[0]
    assert ax.get_ylim() == (1, 5) and "CI" not in ax.get_title()


def test_rouge_bars_on_zero_one():
    fig = report.bar_figure("qa", RESULTS["tasks"]["qa"], RESULTS["scores"]["qa"], list(RESULTS["models"]))
    assert fig.axes[0].get_ylim()[1] == 1.0 and not math.isnan(fig.axes[0].patches[0].get_height())
