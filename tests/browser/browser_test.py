"""The browser test (``make test-browser``): every notebook and the explorer app, driven in headless Chromium.

It starts JupyterLab and the Voilà explorer app on 127.0.0.1 with a random token, drives Debian's Chromium
(``/usr/bin/chromium``; installed with apt-get when missing and running as root) through Playwright from
PyPI — no browser download — and for every notebook, run in its smoke setting:

* runs all cells and asserts that no cell has an error output;
* asserts that every plotly figure and every widget the notebook displays is rendered on the page;
* asserts that no static copy of a live widget's view (meant for the HTML export) stays on the page beside
  the live widget, and that widgets listing the same runs list them in the same order;
* asserts that every figure's titles fit: no annotation (subplot title) overlaps another, no title runs
  out of the figure, no y-axis title is longer than its axis;
* asserts that each exercise cell (``qN.check(None ...)``) says "Incomplete — set your answer first" rather than
  failing;
* for every control (dropdown, slider, toggle, multiple choice, text, button) in a widget that shows a
  figure: changes it (pressing the widget's Run button when the figure waits for it) and asserts that
  the figure changes.

Then it runs ``00_quickstart`` with a bad parameter (``steps = -5``) and asserts that the error shown is the
message alone, one or two lines naming ``steps`` and no other parameter; and ``05_claims`` in its DEFAULT setting
as a fresh clone has it (the committed ``docs/claims``, no study): no section may say "skipped", every figure and
the claims explorer must show, and every control of the explorer must redraw its figure.

Each notebook run in JupyterLab is saved and turned into a handout (:mod:`mao_lab.handouts`), which is opened
with every request outside the handouts folder blocked (Playwright routes): its equations must be typeset,
its figures drawn, and no request may leave the folder.  So is one page of ``make demo``'s run folder (06's,
made offline by ``python -m mao_lab.handouts <run> --in-place`` as the demo does), with every request outside
the run folder blocked.

The explorer app gets a third run folder named ``<img src=x onerror=...>``: its name must show as text, and
no element or script may come from it.  Then ``make room`` starts a JupyterLab for each of two participants:
A's link must open JupyterLab and a notebook whose kernel starts; A's token and A's login cookie must not open
B's server.  ``--only`` picks pages (``--only app``, ``--only 05 app``, ``--only room``).

A failure saves a screenshot under ``runs/browser-test/``.  It prints a table: notebook × figures,
widgets, controls, controls that redrew their figure, exercises, seconds.  Exit status 0 only when everything
passed.  Not collected by ``pytest``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
ARTIFACTS = ROOT / "runs" / "browser-test"
RUN_TIMEOUT_S = 240  # one notebook's smoke run
REDRAW_TIMEOUT_S = 60  # a control's change (a Run included) until its figure changes
STATIC_COPY_TIMEOUT_S = 20  # a live widget drawn until the kernel has removed its static copy
BAD_PARAMETER = {"steps": -5}  # given to 00_quickstart: its error must name `steps` only
BAD_SUFFIX = "-bad-parameter"  # the name of that copy
DEFAULT_SUFFIX = "-default"  # a copy run with the notebook's own parameters (05_claims: from docs/claims)
DEFAULT_SETTING = ("05_claims",)  # the notebooks also run in their default setting
XSS_NAME = "<img src=x onerror=window.__xss=1>"  # a run folder's name that must show as text
HANDOUT_WAIT_MS = 20_000  # a handout's MathJax and figures, drawn
ROOM_SIZE = 2  # make room's participants in the test
DEMO_PAGE = "06_workshop_mao_update"  # the page of `make demo`'s run folder checked offline (maths and figures)


@dataclass
class Result:
    """What the browser test saw on one page."""

    name: str
    figures: int = 0
    widgets: int = 0
    controls: int = 0
    redrew: int = 0
    exercises: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


# -- the browser and the servers ---------------------------------------------------------------------------


def ensure_chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing (CI runs as root)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0:
        sys.exit(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium) as root")
    print("installing Debian's chromium with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(command: list[str], url: str, log: Path, cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """Start a server, wait until ``url`` answers, and stop it (its process group) afterwards."""
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}; its log: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within 120 s; log: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)


def refuses_without_token(url: str) -> bool:
    """Does the server refuse ``url`` (no token) — an error status or a redirect to its login page?"""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(url, timeout=10) as response:
            return response.status >= 300
    except urllib.error.HTTPError as error:
        return error.code in (301, 302, 303, 307, 401, 403)


def prepare_workspace(work: Path, names: list[str]) -> list[Path]:
    """Copies of the notebooks with their smoke parameters injected (as papermill does), outputs under ``work``."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from mao_lab.runner import find_notebooks

    folder = work / "notebooks"
    folder.mkdir(parents=True)
    copies = []
    for path in find_notebooks(names):
        notebook = load_notebook_node(str(path))  # papermill's reader: the metadata it expects
        notebook = parameterize_notebook(notebook, {"smoke": True, "output_dir": str(work / "out" / path.stem)})
        copy = folder / path.name
        nbformat.write(notebook, copy)
        copies.append(copy)
        if path.stem in DEFAULT_SETTING:  # as in a fresh clone: the committed docs/ beside the notebooks, no runs/
            default = parameterize_notebook(
                load_notebook_node(str(path)), {"output_dir": str(work / "out" / f"{path.stem}-default")}
            )
            nbformat.write(default, folder / f"{path.stem}{DEFAULT_SUFFIX}.ipynb")
            copies.append(folder / f"{path.stem}{DEFAULT_SUFFIX}.ipynb")
            if not (work / "docs").exists():
                (work / "docs").symlink_to(ROOT / "docs")
        if path.stem == "00_quickstart":
            bad = parameterize_notebook(
                load_notebook_node(str(path)), {"smoke": True, **BAD_PARAMETER, "output_dir": str(work / "out" / "bad")}
            )
            nbformat.write(bad, folder / f"{path.stem}{BAD_SUFFIX}.ipynb")
            copies.append(folder / f"{path.stem}{BAD_SUFFIX}.ipynb")
    # Lab settings for the test only: every cell attached to the page, so every output renders.
    settings = work / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    # The kernels read the lab's kernel config as `make setup` installs it (.venv/etc/ipython): here a profile.
    profile = work / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    shutil.copy(ROOT / "config" / "ipython_kernel_config.py", profile / "ipython_kernel_config.py")
    news = work / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return copies


# -- the page ----------------------------------------------------------------------------------------------

# The notebook panel's state, from JupyterLab's own model (exposed with expose_app_in_browser).
STATE_JS = r"""() => {
  const panel = window.__panel;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  let errors = [], plotly = 0, views = 0, pending = 0, viewText = [], unanswered = 0, noise = [];
  for (const [i, cell] of cells.entries()) {
    if (cell.model.executionCount === null || (cell.promptNode && cell.promptNode.textContent.includes('*'))) pending++;
    for (const out of cell.model.outputs.toJSON()) {
      if (out.output_type === 'error') errors.push(`cell ${i}: ${out.ename}: ${out.evalue}`);
      const data = out.data || {};
      if (data['application/vnd.plotly.v1+json']) plotly++;
      // tqdm's progress bars are widgets too, and a finished inner bar is closed: they are not counted.
      const text = String(data['text/plain'] || '');
      if (String(out.text || '').includes('susceptible to eavesdropping')) noise.push(`cell ${i}: ipykernel's TCP warning`);
      if (text.includes('set your answer first')) unanswered++;  // an exercise's checker, not answered yet
      if (data['application/vnd.jupyter.widget-view+json'] && !/\d+\/\d+ \[/.test(text)) { views++; viewText.push(text.slice(0, 80)); }
    }
  }
  return {kernel: kernel ? kernel.status : 'none', cells: cells.length, pending, errors, plotly, views, viewText, unanswered, noise};
}"""  # noqa: E501 - JavaScript run in the page, one statement a line

# Visible figures beside a live widget (in its cell, outside every widget) whose traces equal a figure's inside
# it: a static copy of the widget's view left on the page (it disagrees with the widget after the first change).
# (A figure of another cell may show the same runs: that is the notebook's own figure, not a copy.)
STATIC_COPIES_JS = """(root) => {
  const strip = v => (v && v.constructor && v.constructor.name.endsWith('Array') && !Array.isArray(v)) ? Array.from(v) : v;
  const traces = gd => JSON.stringify((gd.data || []).map(t => [t.type, t.name, strip(t.x), strip(t.y), strip(t.z)]));
  const title = gd => String((gd.layout && gd.layout.title && gd.layout.title.text) || 'untitled').slice(0, 80);
  const copies = [];
  for (const cell of root.querySelectorAll('.jp-CodeCell')) {
    const shown = Array.from(cell.querySelectorAll('.js-plotly-plot')).filter(gd => gd.offsetParent !== null);
    const live = new Set(shown.filter(gd => gd.closest('.jupyter-widgets')).map(traces));
    copies.push(...shown.filter(gd => !gd.closest('.jupyter-widgets') && live.has(traces(gd))).map(title));
  }
  return copies;
}"""  # noqa: E501 - JavaScript run in the page, one statement a line

# Titles that do not fit, in every visible figure: annotations (subplot titles) overlapping each other, a
# title or axis title running out of the figure (clipped), a y-axis title longer than its axis by more than
# 20 px at either end (a few px into the margins is harmless; more reaches the title or the tick labels).
LAYOUT_JS = """(root) => {
  const problems = [];
  const inside = (a, b) => a.left >= b.left - 1 && a.right <= b.right + 1 && a.top >= b.top - 1 && a.bottom <= b.bottom + 1;
  const overlap = (a, b) => a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
  const shown = Array.from(root.querySelectorAll('.js-plotly-plot')).filter(gd => gd.offsetParent !== null);
  for (const gd of shown) {
    const name = String((gd.layout && gd.layout.title && gd.layout.title.text) || 'untitled').replace(/<[^>]+>/g, ' ').slice(0, 70);
    const svg = gd.querySelector('.main-svg').getBoundingClientRect();
    const notes = Array.from(gd.querySelectorAll('.infolayer g.annotation text')).filter(t => t.textContent.trim());
    const boxes = notes.map(t => t.getBoundingClientRect());
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++)
      if (overlap(boxes[i], boxes[j])) problems.push(`${name}: "${notes[i].textContent}" overlaps "${notes[j].textContent}"`);
    const titles = Array.from(gd.querySelectorAll('.infolayer [class*="title"] text, .infolayer g.annotation text'));
    for (const t of titles) {
      if (!t.textContent.trim()) continue;
      if (!inside(t.getBoundingClientRect(), svg)) problems.push(`${name}: "${t.textContent.slice(0, 60)}" runs out of the figure`);
    }
    const full = gd._fullLayout || {};
    for (const g of gd.querySelectorAll('.infolayer [class^="g-y"][class$="title"]')) {
      const axis = full[g.getAttribute('class').slice(2, -5).replace(/^y$/, 'yaxis').replace(/^y(\\d+)$/, 'yaxis$1')];
      const text = g.querySelector('text');
      if (axis && text && text.textContent.trim() && text.getBoundingClientRect().height > axis._length + 40)
        problems.push(`${name}: the y-axis title "${text.textContent.slice(0, 60)}" is longer than its axis`);
    }
  }
  return problems;
}"""  # noqa: E501 - JavaScript run in the page, one statement a line

# The options of every dropdown labelled `run`, in order.
RUN_LISTS_JS = """(root) => Array.from(root.querySelectorAll('.widget-dropdown')).filter(d => {
  const label = d.querySelector('label'); return label && label.textContent.trim() === 'run';
}).map(d => Array.from(d.querySelectorAll('option')).map(o => o.textContent))"""

# A signature of every plotly figure inside an element: changes when any trace or the title changes.
SIGNATURE_JS = """(root) => Array.from(root.querySelectorAll('.js-plotly-plot')).map(gd => {
  const strip = v => (v && v.constructor && v.constructor.name.endsWith('Array') && !Array.isArray(v)) ? Array.from(v) : v;
  const traces = (gd.data || []).map(t => JSON.stringify([t.name, strip(t.x), strip(t.y), strip(t.z), t.visible]));
  const title = gd.layout && gd.layout.title ? JSON.stringify(gd.layout.title.text || gd.layout.title) : '';
  return title + '|' + traces.join(';');
}).join('||')"""  # noqa: E501 - JavaScript run in the page, one statement a line


def controls_of(area):  # noqa: ANN001 - a Playwright locator
    """The controls in a widget area, as (kind, locator) pairs, buttons last (Run presses come after changes)."""
    found = []
    for kind, selector in (
        ("dropdown", ".widget-dropdown select"),
        ("multiple", ".widget-select-multiple select"),
        ("toggle", ".widget-toggle-buttons"),
        ("slider", ".widget-slider, .widget-hslider"),
        ("text", ".widget-text input, .widget-inline-hbox input[type=number]"),
        ("checkbox", ".widget-checkbox input[type=checkbox]"),
        ("button", "button.widget-button"),
    ):
        locator = area.locator(selector)
        found += [(kind, locator.nth(i)) for i in range(locator.count())]
    return found


def change(kind: str, control, page) -> str:  # noqa: ANN001
    """Change one control as a person would; returns what was done (empty when nothing could change)."""
    if kind in ("dropdown", "multiple", "text", "button") and control.is_disabled():
        return ""
    if kind == "dropdown":
        options = control.locator("option")
        current = control.evaluate("s => s.selectedIndex")
        if options.count() < 2:
            return ""
        index = 1 if current == 0 else 0
        control.select_option(index=index)
        return f"option {index}"
    if kind == "multiple":
        values = [options.get_attribute("value") for options in control.locator("option").all()]
        chosen = control.evaluate("s => Array.from(s.selectedOptions).map(o => o.value)")
        pick = [v for v in values if v not in chosen][:1] + chosen[:1]
        if set(pick) == set(chosen) or not pick:
            return ""
        control.select_option(pick)
        return f"options {pick}"
    if kind == "toggle":
        buttons = control.locator("button")
        for i in range(buttons.count()):
            if "mod-active" not in (buttons.nth(i).get_attribute("class") or ""):
                buttons.nth(i).click()
                return f"toggle {buttons.nth(i).inner_text()}"
        return ""
    if kind == "slider":
        handles = control.locator(".noUi-handle")
        if handles.count() == 0:
            return ""
        handle = handles.nth(0)
        handle.focus()
        before = control.locator(".widget-readout").inner_text() if control.locator(".widget-readout").count() else ""
        for key in ("ArrowRight", "ArrowLeft", "ArrowLeft"):
            handle.press(key)
            page.wait_for_timeout(150)
            after = (
                control.locator(".widget-readout").inner_text() if control.locator(".widget-readout").count() else ""
            )
            if after != before:
                return f"{key} ({before} -> {after})"
        return ""
    if kind == "text":
        value = control.input_value()
        try:
            new = str(float(value) * 2)
        except ValueError:
            new = value + "x"
        control.fill(new)
        control.press("Enter")
        return f"text {value} -> {new}"
    if kind == "button":
        control.click()
        return "click"
    if kind == "checkbox":
        ticked = control.is_checked()
        control.click()
        return f"{'untick' if ticked else 'tick'}"
    return ""


def signature(area) -> str:  # noqa: ANN001
    return area.evaluate(SIGNATURE_JS)


def wait_for_change(area, before: str, seconds: float, page) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = signature(area)
        if now and now != before:
            return True
        page.wait_for_timeout(250)
    return False


def run_button(area):  # noqa: ANN001
    button = area.locator("button.widget-button", has_text="Run")
    return button.first if button.count() else None


def exercise_widgets(page, areas, result: Result, label: str) -> None:  # noqa: ANN001
    """For every control of every widget area showing a figure: change it and expect the figure to change."""
    for a, area in enumerate(areas):
        if area.locator(".js-plotly-plot").count() == 0:
            continue
        run = run_button(area)
        for kind, control in controls_of(area):
            if kind == "button" and run is not None and control.inner_text().strip() == "Run":
                continue  # pressed after each change below; counted with the control it serves
            if kind == "checkbox" and control.is_disabled():
                continue  # the explorer's own run: always drawn, its box disabled
            result.controls += 1
            before = signature(area)
            done = change(kind, control, page)
            if not done:
                result.problems.append(f"{label} area {a}: could not change the {kind} control")
                continue
            redrew = wait_for_change(area, before, 2, page)  # a figure that follows its control at once
            if not redrew and run is not None:
                run.click()
                redrew = wait_for_change(area, before, REDRAW_TIMEOUT_S, page)
            if redrew:
                result.redrew += 1
            else:
                result.problems.append(
                    f"{label} area {a}: changing the {kind} control ({done}) did not change its figure"
                )
                page.screenshot(path=str(ARTIFACTS / f"{label}-area{a}-{kind}.png"), full_page=True)


def open_and_run(page, base: str, token: str, path: Path, result: Result) -> dict:  # noqa: ANN001
    """Open ``path`` in JupyterLab, run all its cells, and wait until they finished or one failed."""
    if not page.url.startswith(f"{base}/lab"):
        page.goto(f"{base}/lab?token={token}", timeout=120_000)
        page.wait_for_function(
            "() => window.jupyterapp && window.jupyterapp.commands.hasCommand('docmanager:open')", timeout=120_000
        )
    # Opened in the running page (no reload of JupyterLab for each notebook).
    page.evaluate(
        "async (path) => { const panel = await window.jupyterapp.commands.execute('docmanager:open', {path});"
        " window.__panel = panel; await panel.context.ready; await panel.sessionContext.ready; return true; }",
        f"notebooks/{path.name}",
    )
    page.wait_for_function(
        "() => { const k = window.__panel.sessionContext.session && window.__panel.sessionContext.session.kernel;"
        " return k && k.status === 'idle'; }",
        timeout=120_000,
    )
    page.evaluate(
        "() => { window.jupyterapp.shell.activateById(window.__panel.id);"
        " window.jupyterapp.commands.execute('notebook:run-all-cells'); }"
    )
    deadline = time.monotonic() + RUN_TIMEOUT_S
    state = page.evaluate(STATE_JS)
    while time.monotonic() < deadline:
        state = page.evaluate(STATE_JS)
        if state["errors"] or (state["pending"] == 0 and state["kernel"] == "idle"):
            break
        page.wait_for_timeout(500)
    else:
        result.problems.append(f"did not finish within {RUN_TIMEOUT_S} s ({state['pending']} cells pending)")
    page.wait_for_timeout(1500)  # let the last outputs render
    return state


def close_notebook(page) -> None:  # noqa: ANN001
    """Free the cores for the next notebook: shut the kernel down, drop the tab (no save dialog)."""
    page.evaluate("async () => { const p = window.__panel; await p.sessionContext.shutdown(); p.dispose(); }")


def static_copies(notebook, page) -> list[str]:  # noqa: ANN001
    """Static copies of live widgets' views still on the page once the kernel has had time to remove them."""
    deadline = time.monotonic() + STATIC_COPY_TIMEOUT_S
    while True:
        copies = notebook.evaluate(STATIC_COPIES_JS)
        if not copies or time.monotonic() > deadline:
            return copies
        page.wait_for_timeout(500)


def check_page_layout(notebook, result: Result) -> None:  # noqa: ANN001
    """Titles that fit, and widgets that list the same runs in one order."""
    result.problems += notebook.evaluate(LAYOUT_JS)
    lists = notebook.evaluate(RUN_LISTS_JS)
    for i, first in enumerate(lists):
        for second in lists[i + 1 :]:
            if set(first) == set(second) and first != second:
                result.problems.append(f"two widgets list the runs in different orders: {first} and {second}")


def expected_exercises(path: Path) -> int:
    """How many exercise checks the notebook's cells call unanswered (read from the notebook file)."""
    import nbformat

    cells = nbformat.read(path, as_version=4).cells
    return sum(c.source.count(".check(None") for c in cells if c.cell_type == "code")


def check_notebook(page, base: str, token: str, path: Path) -> Result:  # noqa: ANN001
    result = Result(path.stem)
    started = time.monotonic()
    state = open_and_run(page, base, token, path, result)
    notebook = page.locator(".jp-NotebookPanel:visible").first
    # The kernel removes each static copy once the browser has drawn its live widget: wait for that first.
    stale = static_copies(notebook, page)
    result.problems += [f"a static copy of a live widget's view stays on the page: {title}" for title in stale]
    state = page.evaluate(STATE_JS)
    result.problems += [f"error output: {e}" for e in state["errors"]]
    result.problems += [f"noise: {n}" for n in state["noise"]]
    result.figures = notebook.locator(".js-plotly-plot").count()
    rendered = notebook.locator(".jp-OutputArea-output:has(> .jupyter-widgets)")
    views = [
        rendered.nth(i) for i in range(rendered.count()) if not rendered.nth(i).locator(".widget-hprogress").count()
    ]
    result.widgets = len(views)
    if result.figures < state["plotly"] or result.figures == 0:
        result.problems.append(
            f"{state['plotly']} plotly outputs in the notebook but {result.figures} figures rendered"
        )
    if result.widgets < state["views"]:
        result.problems.append(f"{state['views']} widget outputs in the notebook but {result.widgets} rendered")
    broken = notebook.get_by_text("Error displaying widget").count() + notebook.get_by_text("Model not found").count()
    if broken:
        result.problems.append(f"{broken} widgets failed to display")
    if not result.problems:
        result.exercises = state["unanswered"]
        if result.exercises != expected_exercises(path):
            result.problems.append(
                f"{expected_exercises(path)} unanswered exercise checks in the notebook, {result.exercises} said so"
            )
        check_page_layout(notebook, result)
    if path.stem.endswith(DEFAULT_SUFFIX):
        result.problems += default_setting_problems(notebook, state, result)
    if not result.problems:
        exercise_widgets(page, views, result, path.stem)
        stale = notebook.evaluate(STATIC_COPIES_JS)  # none may come back after the changes either
        result.problems += [
            f"after the changes, a static copy of a live widget's view is on the page: {title}" for title in stale
        ]
    if result.problems:
        page.screenshot(path=str(ARTIFACTS / f"{path.stem}.png"), full_page=True)
        (ARTIFACTS / f"{path.stem}.html").write_text(notebook.inner_html())
        (ARTIFACTS / f"{path.stem}.state.json").write_text(json.dumps(state, indent=1))
    page.evaluate("async () => { await window.__panel.context.save(); }")  # for its handout
    close_notebook(page)
    result.seconds = time.monotonic() - started
    return result


def default_setting_problems(notebook, state: dict, result: Result) -> list[str]:  # noqa: ANN001
    """05 from a fresh clone: no section skipped, a figure in every section, the explorer shown."""
    problems = []
    skipped = notebook.locator(".jp-OutputArea-output", has_text="skipped").count()
    if skipped:
        problems.append(f"{skipped} outputs say 'skipped' in the default setting")
    if result.figures < 10:
        problems.append(f"only {result.figures} figures in the default setting (every section draws one)")
    if result.widgets < 1 or notebook.locator(".widget-dropdown label", has_text="claim").count() == 0:
        problems.append("the claims explorer is not shown in the default setting")
    return problems


def _only_under(folder: str, outside: list[str]):  # noqa: ANN202 - a Playwright route handler
    """Let requests under ``folder`` through; abort every other one and note its URL in ``outside``."""

    def route(r) -> None:  # noqa: ANN001 - one parameter: Playwright then passes the route alone
        if r.request.url.startswith(folder):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    return route


def check_offline_page(page, page_path: Path, folder: Path, notebook: Path, result: Result) -> None:  # noqa: ANN001
    """Open ``page_path`` with every request outside ``folder`` blocked: equations typeset, figures drawn."""
    import nbformat

    outside: list[str] = []
    page.route("**/*", _only_under(folder.resolve().as_uri(), outside))
    try:
        page.goto(page_path.resolve().as_uri(), timeout=120_000)
    except Exception as error:  # noqa: BLE001 - reported, and the next page is checked
        result.problems.append(f"the page did not load: {type(error).__name__}: {str(error)[:200]}")
    has_maths = any("$" in c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "markdown")
    # Any failure to settle is fine here: what is missing is counted and reported below.
    with contextlib.suppress(Exception):
        page.wait_for_function(
            "() => (!window.MathJax || (MathJax.Hub && MathJax.Hub.queue"
            " && !MathJax.Hub.queue.pending && !MathJax.Hub.queue.running))"
            " && Array.from(document.querySelectorAll('.plotly-graph-div'))"
            ".every(d => d.querySelector('.main-svg'))",
            timeout=HANDOUT_WAIT_MS,
        )
    divs = page.locator(".plotly-graph-div").count()
    result.figures = page.locator(".plotly-graph-div:has(.main-svg)").count()
    typeset = page.locator(".MathJax, .MathJax_Display").count()
    raw = page.evaluate(
        "() => Array.from(document.querySelectorAll('.jp-MarkdownOutput'))"
        ".filter(e => /\\$\\$|\\\\frac|\\\\hat/.test(e.innerText)).length"
    )
    if outside:
        result.problems.append(f"{len(outside)} requests outside {folder.name}/, e.g. {outside[0][:100]}")
    if result.figures < divs or divs == 0:
        result.problems.append(f"{result.figures} of {divs} figures drawn with the network blocked")
    if has_maths and (typeset == 0 or raw):
        result.problems.append(f"equations not typeset offline ({typeset} typeset, {raw} cells with raw LaTeX)")
    result.widgets = typeset
    page.unroute("**/*")
    if result.problems:
        page.screenshot(path=str(ARTIFACTS / f"{page_path.stem}-offline.png"), full_page=True)


def check_handouts(page, saved: list[Path], out: Path) -> list[Result]:  # noqa: ANN001
    """Handouts of the saved notebooks, opened with the network blocked: equations typeset, figures drawn."""
    from mao_lab.handouts import export_handout

    results = []
    for notebook in saved:
        result = Result(f"handout {notebook.stem}"[:32])
        started = time.monotonic()
        try:
            page_path = export_handout(notebook, out)
        except Exception as error:  # noqa: BLE001 - reported
            result.problems.append(f"export failed: {type(error).__name__}: {error}")
            results.append(result)
            continue
        check_offline_page(page, page_path, out, notebook, result)
        result.seconds = time.monotonic() - started
        results.append(result)
    return results


def check_demo_page(page, notebook: Path, run: Path) -> Result:  # noqa: ANN001
    """One page of ``make demo``'s run folder, made as the demo makes it, opened with the network blocked.

    ``notebook`` (saved after its run in JupyterLab) goes where the runner puts an executed notebook,
    ``<run>/<name>/<name>.ipynb``; the runner's HTML copy is written beside it (:func:`mao_lab.runner.export_html`)
    and made offline by the command ``make demo`` runs next (``python -m mao_lab.handouts <run> --in-place``).
    """
    from mao_lab.handouts import main as handouts_main
    from mao_lab.runner import export_html

    result = Result(f"demo page {notebook.stem}"[:32])
    started = time.monotonic()
    executed = run / notebook.stem / notebook.name
    executed.parent.mkdir(parents=True)
    shutil.copy(notebook, executed)
    export_html(executed)
    with contextlib.redirect_stdout(io.StringIO()):  # the sizes it prints
        status = handouts_main([str(run), "--in-place"])  # what `make demo` runs after the runner
    if status != 0:
        result.problems.append(f"`python -m mao_lab.handouts {run} --in-place` exited with {status}")
    else:
        check_offline_page(page, executed.with_suffix(".html"), run, notebook, result)
    result.seconds = time.monotonic() - started
    return result


def check_bad_parameter(page, base: str, token: str, path: Path) -> Result:  # noqa: ANN001
    """A bad parameter stops the notebook with its message alone: one short error naming that parameter."""
    ((name, value),) = BAD_PARAMETER.items()
    result = Result(f"{path.stem.removesuffix(BAD_SUFFIX)} ({name} = {value})")
    started = time.monotonic()
    state = open_and_run(page, base, token, path, result)
    notebook = page.locator(".jp-NotebookPanel:visible").first
    shown = notebook.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    texts = [shown.nth(i).inner_text() for i in range(shown.count())]
    lines = [line for text in texts for line in text.splitlines() if line.strip()]
    if len(state["errors"]) != 1 or len(texts) != 1:
        result.problems.append(
            f"expected one error output, got {len(state['errors'])} in the notebook and {len(texts)} on the page"
        )
    elif len(lines) > 2 or f"`{name}` = {value}" not in texts[0]:
        result.problems.append(
            f"the error shown is not a short message naming `{name}`: {len(lines)} lines: {texts[0][:300]!r}"
        )
    elif "`lr`" in texts[0] or "Traceback" in texts[0]:
        result.problems.append(f"the error shown mentions more than the bad parameter: {texts[0][:300]!r}")
    if result.problems:
        page.screenshot(path=str(ARTIFACTS / f"{path.stem}.png"), full_page=True)
    close_notebook(page)
    result.seconds = time.monotonic() - started
    return result


def check_app(page, url: str) -> Result:  # noqa: ANN001
    """The Voilà explorer app: find the runs, open them, then every control of the explorer."""
    result = Result("explorer app (Voilà)")
    started = time.monotonic()
    remote: list[str] = []  # the page must load nothing from outside this machine (an icon font, a CDN)
    page.on(
        "request",
        lambda request: (
            remote.append(request.url) if not request.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None
        ),
    )
    page.goto(url, timeout=120_000)
    page.wait_for_selector("button.widget-button:has-text('Open')", timeout=120_000)
    if page.locator(".widget-checkbox", has_text=XSS_NAME).count() != 1:
        result.problems.append(f"the run folder {XSS_NAME!r} is not listed as text")
    for box in page.locator(".widget-checkbox input[type=checkbox]").all():
        if box.is_checked():
            box.click()  # untick what the page ticked: the test ticks the runs to compare itself
    page.locator(".widget-checkbox", has_text=XSS_NAME).locator("input").check()
    page.locator(".widget-checkbox", has_text="sum").first.locator("input").check()
    page.locator("button.widget-button", has_text="Open").click()
    try:
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)
    except Exception:  # noqa: BLE001 - reported, with a screenshot
        result.problems.append("pressing Open showed no figure")
    result.figures = page.locator(".js-plotly-plot").count()
    app = page.locator(".widget-vbox").first
    result.widgets = 1 if app.count() else 0
    if (
        page.get_by_text("Traceback").count()
        or page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count()
    ):
        result.problems.append("an error is shown on the page")
    if remote:
        result.problems.append(
            f"the page asked for {len(remote)} files from outside this machine, e.g. {remote[0][:100]}"
        )
    if page.evaluate("() => window.__xss !== undefined") or page.locator("img[src='x']").count():
        result.problems.append(f"the run name {XSS_NAME!r} was inserted as HTML")
    if page.get_by_text(f"opened 2 runs: {XSS_NAME}", exact=False).count() == 0:
        result.problems.append("the status line does not show the opened runs' names as text")
    legend = page.locator(".js-plotly-plot .legend text").evaluate_all("els => els.map(e => e.textContent || '')")
    if not any(XSS_NAME in text for text in legend) or not any("sum" in text for text in legend):
        result.problems.append(f"the figure's legend does not name both runs: {legend[:6]}")
    if not result.problems:
        explorer = page.locator(".widget-vbox:has(.js-plotly-plot)").last
        exercise_widgets(page, [explorer], result, "explorer-app")
    if result.problems:
        page.screenshot(path=str(ARTIFACTS / "explorer-app.png"), full_page=True)
    result.seconds = time.monotonic() - started
    return result


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of ``url`` as a browser would first see it (redirects not followed)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
            return None

    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.build_opener(NoRedirect).open(request, timeout=20) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def check_room(page, work: Path, env: dict[str, str]) -> Result:  # noqa: ANN001
    """``make room`` for two participants: A's link opens JupyterLab and a notebook (its kernel starts); A's token
    and A's login cookie do not open B's server, B's own token does."""
    result = Result(f"room ({ROOM_SIZE} participants)")
    started = time.monotonic()
    port_base = free_port()
    while not all(_port_free(port_base + i) for i in range(ROOM_SIZE)):
        port_base = free_port()
    command = [
        sys.executable, "-m", "mao_lab.classroom", "room", f"--participants={ROOM_SIZE}",
        f"--dir={work / 'room'}", f"--port-base={port_base}",
    ]  # fmt: skip
    log = ARTIFACTS / "room.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 240
        while "servers running" not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        seats = re.findall(r"^(p\d\d)\s+(\d+)\s+(http://\S+token=(\S+))$", log.read_text(), re.MULTILINE)
        if len(seats) != ROOM_SIZE:
            result.problems.append(f"the room printed {len(seats)} links, not {ROOM_SIZE}: {log.read_text()[-500:]}")
            return result
        (a, a_port, a_url, a_token), (b, b_port, _, b_token) = seats[:2]
        contents = "http://127.0.0.1:{port}/{name}/api/contents/notebooks"
        b_api = contents.format(port=b_port, name=b)
        if _status(f"{b_api}?token={a_token}") not in (401, 403):
            result.problems.append(f"{a}'s token opens {b}'s server")
        if _status(f"{b_api}?token={b_token}") != 200:
            result.problems.append(f"{b}'s own token does not open {b}'s server")
        notebook = "notebooks/00_quickstart.ipynb"
        page.goto(a_url.replace("/lab?", f"/lab/tree/{notebook}?"), timeout=120_000)
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
        sessions = f"http://127.0.0.1:{a_port}/{a}/api/sessions?token={a_token}"
        kernel = ""
        while time.monotonic() < deadline + 60 and kernel != "idle":
            with urllib.request.urlopen(sessions, timeout=20) as response:
                listed = json.loads(response.read())
            kernel = next((s["kernel"]["execution_state"] for s in listed if s["path"] == notebook), "")
            time.sleep(0.5)
        if kernel != "idle":
            result.problems.append(f"{notebook} opened in {a}'s JupyterLab but its kernel is {kernel or 'missing'}")
        result.figures = page.locator(".jp-NotebookPanel .jp-Cell").count()  # the notebook's cells, shown
        cookie = next((c for c in page.context.cookies() if c["name"] == f"username-127-0-0-1-{a_port}"), None)
        if cookie is None:
            result.problems.append(f"{a}'s JupyterLab set no login cookie")
        else:
            a_api = contents.format(port=a_port, name=a)
            if _status(a_api, {"Cookie": f"{cookie['name']}={cookie['value']}"}) != 200:
                result.problems.append(
                    f"{a}'s login cookie does not open {a}'s own server (the check below means nothing)"
                )
            replayed = {"Cookie": f"username-127-0-0-1-{b_port}={cookie['value']}"}
            if _status(b_api, replayed) not in (401, 403):
                result.problems.append(f"{a}'s login cookie, sent to {b}'s server, opens it")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            result.problems.append("the room did not stop within 60 s of SIGTERM")
    if process.returncode not in (0, -signal.SIGTERM) and not result.problems:
        result.problems.append(f"the room exited with {process.returncode}: {log.read_text()[-500:]}")
    if result.problems:
        page.screenshot(path=str(ARTIFACTS / "room.png"), full_page=True)
    result.seconds = time.monotonic() - started
    return result


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def make_demo_runs(folder: Path) -> None:
    """Two small recorded runs (Adam on the sum and MAO) for the explorer app to open."""
    code = (
        "import sys, torch\n"
        "from mao_lab.methods import make\n"
        "from mao_lab.problems import ImbalancedRegression, regression_model\n"
        "from mao_lab.recorder import Recorder\n"
        "torch.set_num_threads(1)\n"
        "data = ImbalancedRegression(num_tasks=3, sigma_range=(1.0, 100.0), num_samples=400, seed=0)\n"
        "for name in ('sum', 'mao', sys.argv[2]):\n"
        "    model = regression_model(3, seed=0)\n"
        "    method = make('sum' if name.startswith('<') else name, model.parameters(), lr=1e-3)\n"
        "    with Recorder(model, method, every=1, run_dir=sys.argv[1] + '/' + name, params={'method': name}):\n"
        "        for step, (x, y) in zip(range(12), data.batches(40)):\n"
        "            method.step(lambda: data.task_losses(model(x), y))\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(folder), XSS_NAME], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def print_table(results: list[Result]) -> None:
    header = (
        f"{'page':<32} {'figures':>7} {'widgets':>7} {'controls':>8} {'redrew':>6} {'exercises':>9} {'seconds':>7}"
        "  status"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        status = "ok" if not r.problems else f"FAILED ({len(r.problems)})"
        print(
            f"{r.name:<32} {r.figures:>7} {r.widgets:>7} {r.controls:>8} {r.redrew:>6} {r.exercises:>9}"
            f" {r.seconds:>7.1f}  {status}"
        )
    for r in results:
        for problem in r.problems:
            print(f"  {r.name}: {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebook names or prefixes (default: all)")
    parser.add_argument("--no-app", action="store_true", help="skip the Voilà explorer app")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="PAGE",
        help="only these pages: notebook names or prefixes, `app` for the explorer app, `room` for make room",
    )
    parser.add_argument("--no-handouts", action="store_true", help="skip the offline handouts")
    parser.add_argument("--no-room", action="store_true", help="skip make room (a server per participant)")
    args = parser.parse_args(argv)
    if args.only:
        args.no_app = "app" not in args.only
        args.no_room = "room" not in args.only
        args.notebooks = [name for name in args.only if name not in ("app", "room")]
    from playwright.sync_api import sync_playwright

    chromium = ensure_chromium()
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    started = time.monotonic()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="mao-browser-") as tmp:
        work = Path(tmp)
        only_app = bool(args.only) and not args.notebooks
        copies = [] if only_app else prepare_workspace(work, args.notebooks)
        token = secrets.token_hex(24)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "JUPYTERLAB_SETTINGS_DIR": str(work / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(work / "workspaces"),
            "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
            "IPYTHONDIR": str(work / "ipython"),
        }
        lab_port, app_port = free_port(), free_port()
        lab = [
            str(VENV_BIN / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={lab_port}",
            f"--ServerApp.token={token}", f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
            "--ServerApp.disable_check_xsrf=False", *(["--allow-root"] if os.geteuid() == 0 else []),
        ]  # fmt: skip
        base = f"http://127.0.0.1:{lab_port}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})  # a laptop screen, JupyterLab as it opens
            lab_server = (  # not started when only the app or the room are checked
                server(lab, f"{base}/api/status?token={token}", ARTIFACTS / "jupyterlab.log", work, env)
                if copies
                else contextlib.nullcontext()
            )
            with lab_server:
                if copies and not refuses_without_token(f"{base}/api/contents"):
                    results.append(Result("JupyterLab token", problems=["JupyterLab answers without the token"]))
                for copy in copies:
                    print(f"{copy.stem} …", flush=True)
                    check = check_bad_parameter if copy.stem.endswith(BAD_SUFFIX) else check_notebook
                    if only_app:
                        break
                    try:
                        results.append(check(page, base, token, copy))
                        print(f"  {results[-1]}", flush=True)
                    except Exception as error:  # noqa: BLE001 - one notebook's failure must not hide the others
                        traceback.print_exc()
                        page.screenshot(path=str(ARTIFACTS / f"{copy.stem}-crash.png"), full_page=True)
                        results.append(Result(copy.stem, problems=[f"{type(error).__name__}: {error}"]))
            saved = [c for c in copies if not c.stem.endswith(BAD_SUFFIX)]
            if saved and not args.no_handouts:
                print("handouts …", flush=True)
                results += check_handouts(page, saved, work / "handouts")
                for r in results[-len(saved) :]:
                    print(f"  {r}", flush=True)
                demo = next((c for c in saved if c.stem == DEMO_PAGE), saved[0])  # one page: maths and figures
                results.append(check_demo_page(page, demo, work / "demo-run"))
                print(f"  {results[-1]}", flush=True)
            if not args.no_app:
                runs = work / "app-runs"
                make_demo_runs(runs)
                voila = [
                    str(VENV_BIN / "voila"), "balance_explorer.ipynb", "--template=offline", "--no-browser",
                    "--Voila.ip=127.0.0.1", f"--port={app_port}", f"--Voila.token={token}",
                ]  # fmt: skip
                url = f"http://127.0.0.1:{app_port}/?token={token}"
                app_env = {
                    **env,
                    "MAO_LAB_RUNS": str(runs),
                    "JUPYTER_PATH": str(ROOT / "apps" / "share"),
                }  # as make explorer
                with server(voila, url, ARTIFACTS / "voila.log", ROOT / "apps", app_env):
                    if not refuses_without_token(f"http://127.0.0.1:{app_port}/"):
                        results.append(Result("Voilà token", problems=["the explorer app answers without the token"]))
                    try:
                        results.append(check_app(page, url))
                    except Exception as error:  # noqa: BLE001
                        traceback.print_exc()
                        page.screenshot(path=str(ARTIFACTS / "explorer-app-crash.png"), full_page=True)
                        results.append(Result("explorer app (Voilà)", problems=[f"{type(error).__name__}: {error}"]))
            if not args.no_room:
                print("room …", flush=True)
                try:
                    results.append(check_room(page, work, env))
                except Exception as error:  # noqa: BLE001
                    traceback.print_exc()
                    page.screenshot(path=str(ARTIFACTS / "room-crash.png"), full_page=True)
                    results.append(
                        Result(f"room ({ROOM_SIZE} participants)", problems=[f"{type(error).__name__}: {error}"])
                    )
                print(f"  {results[-1]}", flush=True)
            browser.close()
    print_table(results)
    elapsed = time.monotonic() - started
    failed = sum(1 for r in results if r.problems)
    (ARTIFACTS / "table.json").write_text(json.dumps([r.__dict__ for r in results], indent=2))
    print(f"browser test took {elapsed:.0f} s; screenshots of failures and the logs in {ARTIFACTS}")
    print(f"browser: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
