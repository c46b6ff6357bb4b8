"""The explorer app (served by Voilà with ``make explorer``), driven without a browser."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mao_lab.recorder import (
    BalanceExplorer,
    ExplorerApp,
    find_runs,
    run_label,
    save_run,
)


def tiny_run(folder: Path, shares: tuple[float, float]) -> None:
    frame = pd.DataFrame(
        {
            "step": [0, 0, 1, 1],
            "layer": "trunk.0.weight",
            "module": "trunk.0",
            "kind": "shared",
            "task": ["a", "b", "a", "b"],
            "other_task": None,
            "metric": "update_share",
            "value": [*shares, *shares],
        }
    )
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
    assert list(explorer.run.options) == ["sum"]  # the label: folders such as `runs` left out
    shares = sorted(trace.y.tolist()[0] for trace in explorer.figure.data)
    assert shares == [0.1, 0.9]


def test_ticked_runs_are_compared_on_one_figure_with_one_axis(tmp_path: Path) -> None:
    for seed, shares in enumerate([(0.9, 0.1), (0.6, 0.4), (0.5, 0.5)]):
        tiny_run(tmp_path / "03_multimnist" / "runs" / f"sum-seed{seed}", shares)
    app = ExplorerApp(tmp_path, level="parameter")
    labels = [box.description for box in app.runs.boxes.values()]
    assert labels == [f"03_multimnist / sum / seed {seed}" for seed in range(3)]
    # Ticking a run keeps the others ticked (a checkbox each, not a list where a click deselects the rest).
    app.runs.boxes["03_multimnist/runs/sum-seed2"].value = True
    assert app.runs.value == tuple(f"03_multimnist/runs/sum-seed{seed}" for seed in range(3))
    explorer = app.show()
    assert explorer is not None and explorer.shown_runs() == labels
    figure = explorer.figure
    assert len(figure.data) == 6 and {t.yaxis or "y" for t in figure.data} == {"y"}  # 3 runs x 2 tasks, one y-axis
    by_run = {t.legendgroup: [] for t in figure.data}
    for trace in figure.data:
        by_run[trace.legendgroup].append(trace.y[0])
    assert by_run == {labels[0]: [0.9, 0.1], labels[1]: [0.6, 0.4], labels[2]: [0.5, 0.5]}
    # The same task keeps its colour across runs; each run its own dash.
    colours = {t.name: set() for t in figure.data}
    for trace in figure.data:
        colours[trace.name].add(trace.line.color)
    assert all(len(c) == 1 for c in colours.values()) and len({t.line.dash for t in figure.data}) == 3
    explorer.compare[labels[1]].value = False
    assert explorer.shown_runs() == [labels[0], labels[2]] and len(explorer.figure.data) == 4


def test_nothing_is_preselected_across_notebooks(tmp_path: Path) -> None:
    tiny_run(tmp_path / "02_imbalanced_regression" / "runs" / "sum", (0.9, 0.1))
    tiny_run(tmp_path / "03_multimnist" / "runs" / "mao-seed0", (0.5, 0.5))
    assert ExplorerApp(tmp_path).runs.value == ()
    alone = tmp_path / "03_multimnist"
    assert ExplorerApp(alone).runs.value == ("runs/mao-seed0",)  # one notebook's runs: ticked for you


def test_a_run_named_with_html_shows_as_text(tmp_path: Path) -> None:
    name = "<img src=x onerror=alert(1)>"
    tiny_run(tmp_path / name, (0.7, 0.3))
    tiny_run(tmp_path / "b&b", (0.5, 0.5))
    app = ExplorerApp(tmp_path, level="parameter", preselect=0)
    assert app.runs.boxes[name].description == name  # a Checkbox's description is text (ipywidgets escapes it)
    app.runs.value = (name, "b&b")
    explorer = app.show()
    assert explorer is not None
    assert "<img" not in app.status.value and "&lt;img src=x onerror=alert(1)&gt;" in app.status.value
    assert "b&amp;b" in app.status.value
    texts = [str(explorer.figure.layout.title.text)] + [str(t.legendgrouptitle.text) for t in explorer.figure.data]
    assert all("<img" not in text for text in texts) and any("&lt;img" in text for text in texts)


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
    with pytest.raises(ValueError, match="no run named 'nope'"):
        app.runs.value = ("nope",)


@pytest.mark.parametrize(
    "name, label",
    [
        ("x/02_imbalanced_regression/runs/sum", "02_imbalanced_regression / sum"),
        ("03_multimnist/runs/io_seed_12", "03_multimnist / io / seed 12"),
        ("plain", "plain"),
        (".", "."),
    ],
)
def test_run_labels_name_notebook_method_and_seed(name: str, label: str) -> None:
    assert run_label(name) == label


def test_one_run_figure_escapes_its_name() -> None:
    frame = pd.DataFrame(
        {"step": [0, 1], "layer": None, "task": "<b>t</b>", "other_task": None, "metric": "loss", "value": [2.0, 1.0]}
    )
    figure = BalanceExplorer({"<i>run</i>": frame}).figure
    assert figure.layout.title.text.endswith("&lt;i&gt;run&lt;/i&gt;") and figure.data[0].name == "&lt;b&gt;t&lt;/b&gt;"
