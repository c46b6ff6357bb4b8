"""Fixtures shared by the test files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pandas as pd
import pytest
import torch

pytest.register_assert_rewrite("_helpers")  # its asserts explain themselves as the tests' own do

if TYPE_CHECKING:  # imported after the line above, so that _helpers' asserts are rewritten
    from _helpers import SmokeStudy


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny problems: one torch thread is fastest and keeps a shared machine steady (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory: pytest.TempPathFactory) -> SmokeStudy:
    """One smoke study for the session (about a minute): ``tests/test_study.py`` reads it, and so does
    ``tests/test_notebooks.py``'s smoke run of ``05_claims``.  Every test only reads its folders."""
    from mao_lab.study.__main__ import main  # the study's harness, loaded only by the tests that need it

    from _helpers import SmokeStudy

    root = tmp_path_factory.mktemp("smoke")
    study, docs = root / "study", root / "docs"

    def executed() -> list[str]:
        return sorted(p.name for p in study.glob("*/*/point.ipynb"))

    first = main(["--smoke", "--out", str(study)])
    files, ran = frozenset(p.name for p in study.iterdir() if p.is_file()), executed()
    ledger, ledger_md = pd.read_csv(study / "ledger.csv"), (study / "ledger.md").read_text()
    document = json.loads((study / "ledger.json").read_text())
    resumed = main(["--smoke", "--out", str(study)])  # the same command again: nothing runs again
    ran_again = executed()
    resumed_ledger, resumed_ledger_md = pd.read_csv(study / "ledger.csv"), (study / "ledger.md").read_text()
    resumed_phases = json.loads((study / "provenance.json").read_text())["phases"]
    ledger_only = main(["--ledger-only", str(study), "--out", str(docs)])  # what docs/claims/ is made with
    return SmokeStudy(
        folder=study,
        docs=docs,
        exits=(first, resumed, ledger_only),
        files=files,
        ledger=ledger,
        ledger_md=ledger_md,
        document=document,
        executed=(ran, ran_again),
        resumed_ledger=resumed_ledger,
        resumed_ledger_md=resumed_ledger_md,
        resumed_phases=resumed_phases,
    )
