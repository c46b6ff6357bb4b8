"""The explorer app (served by Voilà with ``make explorer``), driven without a browser."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mao_lab.recorder import ExplorerApp, find_runs, save_run


def tiny_run(folder: Path, shares: tuple[float, float]) -> None:
    frame = pd.DataFrame({
        "step": [0, 0, 1, 1], "layer": "trunk.0.weight", "module": "trunk.0", "kind": "shared",
        "task": ["a", "b", "a", "b"], "other_task": None, "metric": "update_share", "value": [*shares, *shares],
    })
    save_run(folder, frame, {"method": folder.name})


def test_the_app_finds_runs_below_a_folder_and_opens_the_ticked_ones(tmp_path: Path) -> None:
    tiny_run(tmp_path / "study" / "runs" / "sum", (0.9, 0.1))
    tiny_run(tmp_path / "mao", (0.5, 0.5))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "metrics.txt").write_text("not a run")
    assert list(find_runs(tmp_path)) == ["mao", "study/runs/sum"]

    app = ExplorerApp(tmp_path, level="parameter")
    assert list(app.runs.options) == ["mao", "study/runs/sum"] and "2 run folders" in app.status.value
    app.runs.value = ("study/runs/sum",)
    explorer = app.show()
    assert explorer is not None and app.view.children == (explorer.widget,)
    assert list(explorer.run.options) == ["study/runs/sum"]
    shares = sorted(trace.y.tolist()[0] for trace in explorer.figure.data)
    assert shares == [0.1, 0.9]


def test_bad_folders_and_empty_choices_are_reported_in_the_page(tmp_path: Path) -> None:
    app = ExplorerApp(tmp_path / "missing")
    assert "no folder at" in app.status.value and app.runs.options == ()
    assert app.show() is None and "tick at least one run" in app.status.value
    app.root.value = str(tmp_path)
    app.search()
    assert "no run folders" in app.status.value
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.parquet").write_text("not parquet")
    app.search()
    app.runs.value = ("broken",)
    assert app.show() is None and "could not open" in app.status.value
