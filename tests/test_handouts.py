"""make handouts / make slides: pages that load nothing from the network (checked in a browser by the browser test)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from mao_lab.handouts import ASSETS, export_handout, find_executed, main, offline_html, slides_html

pytest.importorskip("jupyter_server_mathjax", reason="make handouts needs jupyter-server-mathjax (requirements.txt)")

REMOTE = re.compile(r"""<(?:script|link)\b[^>]*(?:src|href)=["']https?://""", re.IGNORECASE)


def executed_notebook(folder: Path) -> Path:
    """A small executed notebook as papermill leaves it: maths, a plotly figure (plotly.js inline), a widget view."""
    import plotly.graph_objects as go
    import plotly.io as pio

    figure = go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))
    bundle = pio.renderers["notebook"].to_mimebundle(figure.to_dict())
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    notebook.metadata["widgets"] = {
        "application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2, "version_minor": 0}
    }
    code = nbformat.v4.new_code_cell("figure.show()")
    from plotly.offline import get_plotlyjs

    init = {
        "text/html": (
            f'<script type="text/javascript">window.PlotlyConfig = {{}};</script>\n<script>{get_plotlyjs()}</script>'
        )
    }
    code.outputs = [
        nbformat.v4.new_output("display_data", data=init),  # what the renderer sends once: plotly.js inline
        nbformat.v4.new_output("display_data", data=bundle),
        nbformat.v4.new_output(
            "display_data",
            data={
                "application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2, "version_minor": 0},
                "text/plain": "VBox()",
            },
        ),
    ]
    notebook.cells = [nbformat.v4.new_markdown_cell("The rule: $$\\theta_t = \\theta_{t-1} - \\eta\\, g_t$$"), code]
    path = folder / "07_demo" / "07_demo.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(notebook, path)
    return path


def test_a_handout_loads_only_its_assets_folder(tmp_path: Path) -> None:
    source = executed_notebook(tmp_path / "run")
    page = export_handout(source, tmp_path / "handouts")
    text = page.read_text(encoding="utf-8")
    assert not REMOTE.search(text), REMOTE.search(text)
    local = re.findall(r"""<script[^>]*src=["']([^"']+)["']""", text)
    assert sorted(local) == sorted(
        [f"{ASSETS}/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe", f"{ASSETS}/plotly.min.js"]
    )
    for script in local:
        assert (page.parent / script.split("?")[0]).is_file(), script
    assert "plotly.js v" not in text and "Plotly.newPlot" in text  # plotly.js shared in assets, the figure kept
    assert "widget-state+json" not in text and "VBox()" not in text  # an inert widget dropped
    assert "\\theta_t" in text  # typeset in the browser by the local MathJax
    assert page.stat().st_size < 1_000_000 < (page.parent / ASSETS / "plotly.min.js").stat().st_size


def test_the_cli_finds_the_run_folder_and_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    executed_notebook(tmp_path / "run")
    assert [p.name for p in find_executed(tmp_path / "run")] == ["07_demo.ipynb"]
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    assert "07_demo.html" in capsys.readouterr().out and (tmp_path / "out" / "07_demo.html").is_file()
    assert main([str(tmp_path / "empty-run-folder"), "--out", str(tmp_path / "out")]) == 2
    assert "make demo" in capsys.readouterr().err


def test_slides_and_the_printable_page_are_offline_too(tmp_path: Path) -> None:
    assert main(["--slides", "--out", str(tmp_path)]) == 0
    for page in [tmp_path / "handout.html", *sorted((tmp_path / "slides").glob("*.html"))]:
        text = page.read_text(encoding="utf-8")
        assert not REMOTE.search(text), page
    wrap_up = (tmp_path / "slides" / "wrap-up.html").read_text(encoding="utf-8")
    assert "<!-- ledger -->" not in wrap_up and "inconclusive" in wrap_up  # the committed verdicts
    assert (tmp_path / ASSETS / "reveal" / "dist" / "reveal.js").is_file()


def test_offline_html_keeps_the_page_and_drops_only_remote_loads() -> None:
    page = (
        '<head><script src="https://cdn.example/require.js"></script></head><body><p>$x$</p>'
        '<script>/**\n* plotly.js v3.0.0\n*/ x</script><div id="f"></div><script>Plotly.newPlot("f")</script></body>'
    )
    out = offline_html(page)
    assert "cdn.example" not in out and "<p>$x$</p>" in out and 'Plotly.newPlot("f")' in out
    assert out.count("assets/plotly.min.js") == 1
    assert slides_html("# A\n\n---\n\n# B", "t").count("<section>") == 2


def test_in_place_makes_a_run_folders_html_copies_offline_and_leaves_the_rest(tmp_path: Path) -> None:
    from mao_lab.runner import export_html

    source = executed_notebook(tmp_path / "run")
    copy = export_html(source)  # the runner's HTML copy, as `python -m mao_lab.runner` leaves it: CDN scripts
    assert REMOTE.search(copy.read_text(encoding="utf-8"))
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p != copy}
    assert main([str(tmp_path / "run"), "--in-place"]) == 0
    text = copy.read_text(encoding="utf-8")
    assert not REMOTE.search(text), REMOTE.search(text)
    local = re.findall(r"""<script[^>]*src=["']([^"']+)["']""", text)
    assert sorted(local) == sorted(
        ["../assets/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe", "../assets/plotly.min.js"]
    )
    for script in local:  # resolved from the page's own folder, as a browser does
        assert (copy.parent / script.split("?")[0]).resolve().is_file(), script
    assert all(path.read_bytes() == content for path, content in before.items())  # notebook and tables intact
    assert not list((tmp_path / "run").glob("*.html"))  # no second page beside the run's folders


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["demo", "smoke"])
def test_make_demo_makes_the_folder_it_ran_into_offline(target: str, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "the-run"
    shown = subprocess.run(
        ["make", "-n", "-C", str(root), target, f"DEMO_OUT={out}"], capture_output=True, text=True, check=True
    ).stdout
    runner = shown.index(f"-m mao_lab.runner {'--smoke ' if target == 'smoke' else ''}--out {out};")
    assert shown.index(f"-m mao_lab.handouts {out} --in-place", runner) > runner
