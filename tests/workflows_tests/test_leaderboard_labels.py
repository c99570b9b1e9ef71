"""The leaderboard's fit-time column says it is a sum over folds (issue 23: "fit s" read as per fold)."""

from __future__ import annotations

from foldwise.tasks.report import LeaderboardRow, leaderboard_markdown
from foldwise.workflows.cli.run import print_leaderboard


def test_markdown_leaderboard_labels_fit_seconds_as_all_folds() -> None:
    rows = [LeaderboardRow(name="ridge", cv_score=0.9, fold_scores=(0.89, 0.91), fit_seconds=3.0, note="")]
    header = leaderboard_markdown(rows, "r2").splitlines()[0]
    assert "| fit s (all folds) |" in header


def test_printed_leaderboard_labels_fit_seconds_as_all_folds(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    summary = {"experiment": "e", "metric": "r2", "run_id": "r", "tracking_uri": "sqlite:///x.db",
               "folds": {"n": 2, "scheme": "kfold", "seed": 1},
               "models": {"ridge": {"cv_score": 0.9, "fold_scores": [0.89, 0.91], "fit_seconds": [1.0, 2.0],
                                    "cached": [False, False]}}}
    print_leaderboard(summary)
    out = capsys.readouterr().out
    assert "fit s (all folds)" in out and "3.00" in out
