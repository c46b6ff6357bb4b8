"""config/ (what `make setup` installs for a class) and `make room` (mao_lab.classroom: a server per participant)."""

from __future__ import annotations

import json
import logging
import runpy
from pathlib import Path

import pytest

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


# -- make room: mao_lab.classroom ------------------------------------------------------------------------------


def test_room_names_ports_and_tokens_are_one_per_participant(tmp_path: Path) -> None:
    import socket

    from mao_lab.classroom import _seats

    with socket.socket() as probe:  # a free port range: probe one, the rest follow it
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    if base > 65000:
        base = 40000
    seats = _seats(3, tmp_path, base)
    assert [s.name for s in seats] == ["p01", "p02", "p03"]
    assert [s.port for s in seats] == [base, base + 1, base + 2]
    assert len({s.token for s in seats}) == 3 and all(len(s.token) >= 32 for s in seats)
    assert [s.folder for s in seats] == [tmp_path / "p01", tmp_path / "p02", tmp_path / "p03"]
    assert not any(tmp_path.iterdir())  # choosing the seats writes nothing


def test_a_participants_folder_is_copied_once_and_keeps_their_edits(tmp_path: Path) -> None:
    from mao_lab.classroom import prepare_folder

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "00_a.ipynb").write_text("original a")
    (notebooks / "01_b.ipynb").write_text("original b")
    (notebooks / "scratch.ipynb").write_text("not a lab notebook")
    docs = tmp_path / "docs"
    (docs / "claims").mkdir(parents=True)
    (docs / "claims" / "ledger.json").write_text("{}")
    seat = tmp_path / "room" / "p01"
    prepare_folder(seat, notebooks, docs)
    assert sorted(p.name for p in (seat / "notebooks").iterdir()) == ["00_a.ipynb", "01_b.ipynb"]
    (seat / "notebooks" / "00_a.ipynb").write_text("the participant's edit")
    (notebooks / "01_b.ipynb").write_text("updated upstream")
    prepare_folder(seat, notebooks, docs)  # a restart of the room
    assert (seat / "notebooks" / "00_a.ipynb").read_text() == "the participant's edit"
    assert (seat / "notebooks" / "01_b.ipynb").read_text() == "original b"
    # 05 reads ../docs/claims from its notebook's folder; it writes into ../runs
    assert (seat / "notebooks" / ".." / "docs" / "claims" / "ledger.json").read_text() == "{}"
    assert (seat / "runs").is_dir()


def test_the_server_command_keeps_the_token_off_the_command_line() -> None:
    from mao_lab.classroom import Seat, server_command

    command = server_command(Seat("p07", 8907, "s3cret-token", Path("/room/p07")), python="py")
    assert not any("s3cret-token" in part for part in command)  # `ps` shows the command line to every user
    assert "--ip=127.0.0.1" in command and "--port=8907" in command and "--ServerApp.base_url=/p07/" in command
    assert "--ServerApp.root_dir=/room/p07" in command


def test_the_nginx_snippet_sends_each_prefix_to_its_own_port(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from mao_lab.classroom import main

    assert main(["nginx", "--participants", "12", "--port-base", "9000"]) == 0
    text = capsys.readouterr().out
    routes = re.findall(r"location /(p\d\d)/ \{\s*proxy_pass http://127\.0\.0\.1:(\d+);", text)
    assert routes == [(f"p{i:02d}", str(9000 + i - 1)) for i in range(1, 13)]
    assert text.count("proxy_set_header Upgrade $http_upgrade;") == 12  # the kernels' WebSockets


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["room", "--participants", "0"], "--participants must be between 1 and 99, got 0"),
        (["room", "--participants", "100"], "between 1 and 99"),
        (["room", "--participants", "two"], "invalid int value"),
        (["room", "--participants", "2", "--port-base", "80"], "--port-base"),
        (["room", "--participants", "2", "--threads", "0"], "--threads must be at least 1"),
        (["nginx", "--participants", "-1"], "between 1 and 99"),
    ],
)
def test_bad_room_arguments_are_one_line_and_exit_2(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mao_lab.classroom import main

    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--dir", str(tmp_path / "room")] if argv[0] == "room" else argv)
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and needle in error and error.count("\n") == 1, error
    assert not (tmp_path / "room").exists()  # nothing started, nothing written


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from mao_lab.classroom import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as stopped:
            main(["room", "--participants", "1", "--port-base", str(port), "--dir", str(tmp_path / "room")])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and f"ports in use on 127.0.0.1: {port}" in error
    assert not (tmp_path / "room").exists()
