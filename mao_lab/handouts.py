"""Handouts for a room without network: executed notebooks as HTML pages that load nothing from the internet.

``make handouts`` (``python -m mao_lab.handouts RUN_DIR --out handouts``) turns every executed notebook of a
run folder (``make demo`` writes one) into ``handouts/<notebook>.html`` beside one shared ``handouts/assets/``:

* the maths is typeset by MathJax 2.7 from ``assets/mathjax`` (copied from the ``jupyter-server-mathjax``
  package, which ships it), not from a CDN;
* plotly.js is ``assets/plotly.min.js``, written once and loaded by every page (not 4.8 MB inside each);
* widgets are inert in a static page: their views are dropped, and the static copy of each live view that the
  notebooks display for the export (:func:`mao_lab.notebook.display_live`) stays; so do require.js and the
  widget manager, which only widgets needed;
* any other ``<script src="http...">`` (plotly's figures ask for MathJax 3 from a CDN) is removed, and so is
  nbconvert's loader of mermaid diagrams (the notebooks have none).

Hand out the whole folder (the pages find ``assets/`` beside them).  ``main`` prints each page's size.

``make demo`` makes its own HTML copies offline the same way (``--in-place``, :func:`offline_run`): each run folder's
``<run>/<name>/<name>.html`` is rewritten to load MathJax and plotly.js from one shared ``<run>/assets/``.

``make slides`` (``--slides``) builds the opening and wrap-up slides from ``docs/slides/*.md`` (slides separated
by ``---`` lines) as reveal.js pages in ``handouts/slides/``: reveal.js 4.0.2 is vendored in
``docs/slides/reveal.js`` (MIT), the maths typeset by the same local MathJax, so they too open offline.  A
``<!-- ledger -->`` line becomes the committed claims ledger's verdicts (``docs/claims/ledger.json``).  It also
writes ``handouts/handout.html``, the printable one-page handout (``docs/handout.md``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ._files import write_atomically

__all__ = [
    "ASSETS",
    "SLIDES_DIR",
    "export_handout",
    "find_executed",
    "main",
    "markdown_page",
    "mathjax_folder",
    "offline_html",
    "offline_run",
    "slides_html",
    "write_assets",
    "write_slides",
]

ASSETS = "assets"
"""The folder beside the handouts that holds MathJax and plotly.js."""

SLIDES_DIR = Path(__file__).resolve().parents[1] / "docs" / "slides"
"""The slides' Markdown sources and the vendored reveal.js."""

_MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"  # the combined configuration the package ships
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_REMOTE_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=[\"']https?://[^\"']*[\"'][^>]*>\s*</script>", re.IGNORECASE)
_WIDGET_STATE = re.compile(r"<script type=\"application/vnd\.jupyter\.widget-state\+json\">.*?</script>", re.DOTALL)
_MERMAID = re.compile(
    r"<script type=\"module\">\s*document\.addEventListener\(\"DOMContentLoaded\"[^<]*?jp-Mermaid.*?</script>",
    re.DOTALL,
)
# The package ships MathJax's STIX-Web fonts only (JupyterLab configures them); MathJax's defaults look for TeX fonts,
# and without them it lays glyphs out from system fonts (hats and roots out of place).
_MATHJAX_FONTS = (
    '<script type="text/x-mathjax-config">MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, '
    'webFont: "STIX-Web", imageFont: null}, SVG: {font: "STIX-Web"}});</script>'
)
_PLOTLY_BUNDLE = re.compile(
    r"<script(?: type=\"text/javascript\")?>\s*/\*\*\s*\n\* plotly\.js v.*?</script>", re.DOTALL
)


def mathjax_folder() -> Path:
    """MathJax 2.7 as shipped by the ``jupyter-server-mathjax`` package (``MathJax.js`` and its folders).

    Raises:
        ModuleNotFoundError: naming the package to install when it is missing.
    """
    try:
        import jupyter_server_mathjax
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "the handouts typeset maths with the MathJax of the jupyter-server-mathjax package: "
            "pip install jupyter-server-mathjax (it is in requirements.txt)"
        ) from error
    folder = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (folder / "MathJax.js").is_file():
        raise FileNotFoundError(f"no MathJax.js in {folder}: reinstall jupyter-server-mathjax")
    return folder


def write_assets(out_dir: Path) -> Path:
    """``out_dir/assets``: MathJax (its config, TeX input, CommonHTML output and fonts) and plotly.min.js."""
    import plotly.offline

    assets = out_dir / ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    source = mathjax_folder()
    target = assets / "mathjax"
    if not (target / "MathJax.js").is_file():
        staged = assets / ".mathjax.partial"
        shutil.rmtree(staged, ignore_errors=True)
        # Left out: translated menus (English is built in) and the accessibility extensions (a menu option).
        shutil.copytree(source, staged, ignore=shutil.ignore_patterns("localization", "a11y"))
        staged.rename(target)
    plotly_js = assets / "plotly.min.js"
    if not plotly_js.is_file():
        write_atomically(plotly_js, lambda tmp: tmp.write_text(plotly.offline.get_plotlyjs(), encoding="utf-8"))
    return assets


def offline_html(body: str, assets: str = ASSETS) -> str:
    """An nbconvert page made to load nothing remote: local MathJax and plotly.js, no CDN script, no widgets.

    >>> page = ('<script src="https://cdn.example/require.min.js"></script><p>x</p>'
    ...         '<script>/**\\n* plotly.js v3.0.0\\n*/ code</script><div>figure</div>')
    >>> offline_html(page)
    '<p>x</p><script src="assets/plotly.min.js"></script><div>figure</div>'
    """
    body = _WIDGET_STATE.sub("", body)
    body = _MERMAID.sub("", body)  # nbconvert's loader of mermaid diagrams (from a CDN); the notebooks have none
    loader = re.search(rf"<script src=\"{re.escape(assets)}/mathjax/MathJax\.js[^\"]*\">\s*</script>", body)
    if loader:
        body = body[: loader.end()] + _MATHJAX_FONTS + body[loader.end() :]
    body = _PLOTLY_BUNDLE.sub(lambda _: f'<script src="{assets}/plotly.min.js"></script>', body, count=1)
    body = _PLOTLY_BUNDLE.sub("", body)  # a second copy (another figure's init) would only redefine it
    return _REMOTE_SCRIPT.sub("", body)


def _without_widget_views(notebook: object) -> None:
    """Drop widget views (inert in a static page) and the widget state; the outputs around them stay."""
    notebook.metadata.pop("widgets", None)  # type: ignore[attr-defined]
    for cell in notebook.cells:  # type: ignore[attr-defined]
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if _WIDGET_VIEW not in o.get("data", {})]


def export_handout(executed: Path, out_dir: Path, *, page: Path | None = None) -> Path:
    """Write ``out_dir/<notebook>.html`` (or ``page``) from an executed notebook, loading only ``out_dir/assets``.

    ``page`` may lie in a folder below ``out_dir`` (``make demo``'s ``<run>/<name>/<name>.html``): its links to the
    assets are then relative to its own folder (``../assets/...``).
    """
    import nbformat
    from nbconvert import HTMLExporter

    notebook = nbformat.read(executed, as_version=4)
    _without_widget_views(notebook)
    assets_dir = write_assets(out_dir)
    target = page if page is not None else out_dir / f"{executed.stem}.html"
    assets = Path(os.path.relpath(assets_dir.resolve(), target.parent.resolve())).as_posix()
    exporter = HTMLExporter(mathjax_url=f"{assets}/mathjax/MathJax.js?config={_MATHJAX_CONFIG}")
    body, _ = exporter.from_notebook_node(notebook)
    html = offline_html(body, assets)
    return write_atomically(target, lambda tmp: tmp.write_text(html, encoding="utf-8"))


def offline_run(run_dir: Path) -> list[Path]:
    """Rewrite a run folder's HTML copies offline in place: ``<name>/<name>.html`` beside its executed notebook.

    MathJax and plotly.js go once into ``run_dir/assets/``; each page loads them from there (``../assets``).
    Only the HTML copies change: the executed notebooks, tables and figures stay byte for byte.

    Raises:
        FileNotFoundError: ``run_dir`` holds no executed notebook.
    """
    executed = find_executed(run_dir)
    if not executed:
        raise FileNotFoundError(f"no executed notebook in {run_dir} (looked for <name>/<name>.ipynb)")
    return [export_handout(notebook, run_dir, page=notebook.with_suffix(".html")) for notebook in executed]


def _ledger_table(claims_dir: Path) -> str:
    """The committed ledger's claims and verdicts as a Markdown table (empty when there is no ledger)."""
    import json

    path = claims_dir / "ledger.json"
    if not path.is_file():
        return ""
    document = json.loads(path.read_text(encoding="utf-8"))
    signs = {"supported": "✓", "not supported": "✗", "inconclusive": "?"}
    rows = [r for r in document["ledger"] if r["part"] == "(claim)"]
    lines = ["| claim | statement | verdict |", "|---|---|---|"]
    lines += [f"| {r['claim']} | {r['effect']} | {signs.get(r['verdict'], '')} {r['verdict']} |" for r in rows]
    return "\n".join(lines)


def slides_html(markdown: str, title: str, assets: str = f"../{ASSETS}", *, ledger: str = "") -> str:
    """A reveal.js page from Markdown slides separated by ``---`` lines; everything it loads is under ``assets``.

    >>> page = slides_html("# One\\n\\n---\\n\\n## Two: $x^2$", "Demo")
    >>> page.count("<section>"), "http" in page.replace("http-equiv", "")
    (2, False)
    """
    from nbconvert.filters.markdown import markdown2html

    markdown = markdown.replace("<!-- ledger -->", ledger)
    slides = [part.strip() for part in re.split(r"^---\s*$", markdown, flags=re.MULTILINE) if part.strip()]
    sections = "\n".join(f"<section>\n{markdown2html(slide)}\n</section>" for slide in slides)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="{assets}/reveal/dist/reveal.css">
<link rel="stylesheet" href="{assets}/reveal/dist/theme/white.css">
<style>.reveal {{ font-family: sans-serif; font-size: 30px; }} .reveal table {{ font-size: 0.7em; }}
.reveal h1, .reveal h2 {{ font-family: sans-serif; text-transform: none; }} .anchor-link {{ display: none; }}</style>
</head><body><div class="reveal"><div class="slides">
{sections}
</div></div>
<script src="{assets}/mathjax/MathJax.js?config={_MATHJAX_CONFIG}"></script>
{_MATHJAX_FONTS}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({{tex2jax: {{inlineMath: [["$", "$"]], displayMath: [["$$", "$$"]]}}}});
</script>
<script src="{assets}/reveal/dist/reveal.js"></script>
<script>Reveal.initialize({{hash: true, width: 1280, height: 760}});</script>
</body></html>
"""


def write_slides(out_dir: Path, source: Path = SLIDES_DIR, claims_dir: Path | None = None) -> list[Path]:
    """``out_dir/slides/<name>.html`` for every ``source/*.md``, with reveal.js and MathJax in ``out_dir/assets``."""
    assets = write_assets(out_dir)
    reveal = assets / "reveal"
    shutil.rmtree(reveal, ignore_errors=True)
    shutil.copytree(source / "reveal.js", reveal)
    ledger = _ledger_table(claims_dir or source.parent / "claims")
    folder = out_dir / "slides"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    printable = source.parent / "handout.md"  # the one-page handout, to print
    if printable.is_file():
        written.append(markdown_page(printable.read_text(encoding="utf-8"), out_dir, "handout"))
    for path in sorted(source.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        title = text.lstrip("# ").splitlines()[0] if text.strip() else path.stem
        page = slides_html(text, title, ledger=ledger)
        written.append(
            write_atomically(
                folder / f"{path.stem}.html", lambda tmp, page=page: tmp.write_text(page, encoding="utf-8")
            )
        )
    return written


def markdown_page(text: str, out_dir: Path, name: str) -> Path:
    """``out_dir/<name>.html`` from Markdown (maths included), through the handouts' offline pipeline."""
    import tempfile

    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"{name}.ipynb"
        nbformat.write(notebook, source)
        page = export_handout(source, out_dir)
    body = page.read_text(encoding="utf-8").replace("</head>", _PRINT_CSS + "</head>", 1)
    return write_atomically(page, lambda tmp: tmp.write_text(body, encoding="utf-8"))


# A printed page: small margins and type, the notebook's padding gone (the one-page handout fits one A4 page).
_PRINT_CSS = (
    "<style>@media print { @page { margin: 10mm; } body { font-size: 9.5pt; } .jp-Notebook { padding: 0 !important; }"
    " .jp-Cell { padding: 0 !important; } .jp-RenderedHTMLCommon { font-size: 9.5pt; line-height: 1.3; }"
    " .jp-RenderedHTMLCommon h1 { font-size: 14pt; margin-top: 0; } .jp-InputPrompt, .jp-Collapser { display: none; } }"
    "</style>"
)


def find_executed(run_dir: Path) -> list[Path]:
    """The executed notebooks of a run folder: ``<run>/<name>/<name>.ipynb``, or notebooks directly in it."""
    found = sorted(p for p in run_dir.glob("*/*.ipynb") if p.stem == p.parent.name)
    return found or sorted(p for p in run_dir.glob("*.ipynb") if not p.name.endswith(".failed.ipynb"))


def _newest_run(root: Path) -> Path | None:
    runs = [d for d in root.iterdir() if d.is_dir() and find_executed(d)] if root.is_dir() else []
    return max(runs, key=lambda d: d.stat().st_mtime, default=None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mao_lab.handouts", description=__doc__.split("\n")[0])
    parser.add_argument(
        "run_dir", nargs="?", help="a run folder of executed notebooks (default: the newest under runs/)"
    )
    parser.add_argument("--out", default="handouts", help="the handouts folder (default: handouts)")
    parser.add_argument("--slides", action="store_true", help="build the slides (docs/slides/*.md) instead")
    parser.add_argument(
        "--in-place",
        action="store_true",
        help="make the run folder's own HTML copies offline (make demo), with one shared <run>/assets/",
    )
    args = parser.parse_args(argv)
    if args.slides:
        try:
            pages = write_slides(Path(args.out))
        except (ModuleNotFoundError, FileNotFoundError) as error:
            print(error, file=sys.stderr)
            return 2
        for page in pages:
            print(f"{page}  {page.stat().st_size / 1e3:.0f} kB")
        print("slides: arrow keys turn them; handout.html: print it (one page)")
        return 0
    run_dir = Path(args.run_dir) if args.run_dir else _newest_run(Path("runs"))
    if run_dir is None or not run_dir.is_dir():
        print(
            f"no run folder {'at ' + str(run_dir) if run_dir else 'under runs/'}: run `make demo` first",
            file=sys.stderr,
        )
        return 2
    executed = find_executed(run_dir)
    if not executed:
        print(
            f"no executed notebook in {run_dir} (looked for <name>/<name>.ipynb): run `make demo` first",
            file=sys.stderr,
        )
        return 2
    try:
        mathjax_folder()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        print(error, file=sys.stderr)
        return 2
    out = run_dir if args.in_place else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pages = offline_run(run_dir) if args.in_place else [export_handout(notebook, out) for notebook in executed]
    for page in pages:
        print(f"{page}  {page.stat().st_size / 1e6:.2f} MB")
    assets = out / ASSETS
    size = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    where = "the HTML copies load nothing from the internet" if args.in_place else f"hand out the whole {out}/ folder"
    print(f"{assets}/  {size / 1e6:.1f} MB, shared by every page (MathJax and plotly.js); {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
