"""config/: what `make setup` installs into the venv for a class (a kernel log filter, JupyterLab settings)."""

from __future__ import annotations

import json
import logging
import runpy
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "config"


def test_the_kernel_config_drops_only_ipykernels_tcp_warning() -> None:
    logger = logging.getLogger("IPKernelApp")
    before = list(logger.filters)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:
        runpy.run_path(str(CONFIG / "ipython_kernel_config.py"), init_globals={"c": None})
        logger.warning("Kernel is running over TCP without encryption. ... and is susceptible to eavesdropping.")
        logger.warning("Parent appears to have exited, shutting down.")
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = before
    assert seen == ["Parent appears to have exited, shutting down."]


def test_the_lab_settings_switch_off_the_news() -> None:
    settings = json.loads((CONFIG / "lab-overrides.json").read_text())
    assert settings["@jupyterlab/apputils-extension:notification"] == {"fetchNews": "false", "checkForUpdates": False}


def test_make_setup_installs_both_where_the_kernel_and_jupyterlab_read_them() -> None:
    makefile = (CONFIG.parent / "Makefile").read_text()
    assert "cp config/ipython_kernel_config.py $(VENV)/etc/ipython/ipython_kernel_config.py" in makefile
    assert "cp config/lab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json" in makefile
