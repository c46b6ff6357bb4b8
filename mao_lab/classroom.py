"""One machine for a whole room: a JupyterLab server per participant, each with its own token, port and notebooks.

``make room PARTICIPANTS=12`` (``python -m mao_lab.classroom room --participants 12``) starts, for participants
``p01`` … ``p12``, one JupyterLab (a jupyter-server) each, listening on 127.0.0.1 only:

* its own port (``--port-base``, then one up per participant) and its own URL prefix (``/p01/``), so that one
  reverse proxy (nginx; :func:`nginx_locations` writes its ``location`` blocks) serves the room under one
  address;
* its own token (``secrets.token_urlsafe``), handed over in the environment (``JUPYTER_TOKEN``), not on the
  command line where ``ps`` shows it; A's token does not open B's server;
* its own working copy ``<dir>/p01/notebooks/`` of ``notebooks/`` (made once, never overwritten: a restart keeps
  the participant's edits), beside a link to the repository's ``docs/`` (05 reads ``../docs/claims``) and its own
  ``runs/``;
* its own JupyterLab layout, settings and cookie secret (``<dir>/.lab/p01/``: A's open tabs never appear in B's
  page, and a login cookie of A's server is refused by B's);
* one thread per kernel (``OMP_NUM_THREADS=1``, ``--threads``): a dozen kernels on a few cores would otherwise
  fight over every core.

It prints a table (participant, port, URL with token) and runs until interrupted (Ctrl-C), then stops every server.
The tokens keep a participant's browser out of another's server; they do not keep a participant's *code* out:
every kernel runs as the same operating-system user and can read the other folders.  For a room whose
participants must not reach each other's files, give each an operating-system user (JupyterHub does that).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .runner import NOTEBOOK_DIR, OneLineArgumentParser

__all__ = [
    "MAX_PARTICIPANTS",
    "Seat",
    "main",
    "nginx_locations",
    "participant_names",
    "prepare_folder",
    "running_room",
    "server_command",
]

MAX_PARTICIPANTS = 99
"""The names are ``p01`` … ``p99``."""

REPOSITORY = NOTEBOOK_DIR.parent
START_TIMEOUT_S = 180.0  # one server, from its start until /api/status answers (a loaded machine is slow)


@dataclass(frozen=True)
class Seat:
    """One participant's server: name (also its URL prefix), port, token and folder."""

    name: str
    port: int
    token: str
    folder: Path

    @property
    def prefix(self) -> str:
        """The URL prefix the server answers under (``/p01/``), the same behind the proxy."""
        return f"/{self.name}/"

    def url(self, base: str | None = None) -> str:
        """The participant's link: JupyterLab with the token, at ``base`` (the proxy) or on 127.0.0.1.

        >>> Seat("p01", 8901, "abc", Path("room/p01")).url()
        'http://127.0.0.1:8901/p01/lab?token=abc'
        >>> Seat("p01", 8901, "abc", Path("room/p01")).url("https://room.example.org/")
        'https://room.example.org/p01/lab?token=abc'
        """
        root = base.rstrip("/") if base else f"http://127.0.0.1:{self.port}"
        return f"{root}{self.prefix}lab?token={self.token}"


def participant_names(count: int) -> list[str]:
    """``p01`` … ``pNN``: names that sort in order and are safe in a URL and a folder name.

    >>> participant_names(3)
    ['p01', 'p02', 'p03']
    >>> participant_names(0)
    Traceback (most recent call last):
    ...
    ValueError: --participants must be between 1 and 99, got 0
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_PARTICIPANTS:
        raise ValueError(f"--participants must be between 1 and {MAX_PARTICIPANTS}, got {count!r}")
    return [f"p{i:02d}" for i in range(1, count + 1)]


def prepare_folder(folder: Path, notebooks: Path = NOTEBOOK_DIR, docs: Path = REPOSITORY / "docs") -> Path:
    """``folder/notebooks/`` with a copy of each ``NN_*.ipynb`` not there yet (a participant's edits stay),
    ``folder/docs`` linked to the repository's ``docs/`` and an empty ``folder/runs/``.

    Returns ``folder``, the server's root.
    """
    target = folder / "notebooks"
    target.mkdir(parents=True, exist_ok=True)
    for notebook in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        copy = target / notebook.name
        if not copy.exists():
            shutil.copyfile(notebook, copy)
    link = folder / "docs"
    if not link.exists() and not link.is_symlink():
        link.symlink_to(docs.resolve(), target_is_directory=True)
    (folder / "runs").mkdir(exist_ok=True)
    return folder


def server_command(seat: Seat, python: str = sys.executable) -> list[str]:
    """The command that starts ``seat``'s JupyterLab (its token comes in the environment, ``JUPYTER_TOKEN``).

    ``allow_remote_access`` lets the server answer requests that a proxy forwards with the room's host name
    (it still listens on 127.0.0.1 only, and every request needs the token).

    >>> command = server_command(Seat("p01", 8901, "secret", Path("room/p01")), python="python")
    >>> command[:4], "--ServerApp.base_url=/p01/" in command, any("secret" in part for part in command)
    (['python', '-m', 'jupyterlab', '--no-browser'], True, False)
    """
    command = [
        python, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={seat.port}",
        "--ServerApp.port_retries=0", f"--ServerApp.base_url={seat.prefix}",
        f"--ServerApp.root_dir={seat.folder.resolve()}", "--ServerApp.allow_remote_access=True",
        "--ServerApp.trust_xheaders=True",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # JupyterLab refuses root (a container) unless told
    return command


def nginx_locations(seats: Sequence[Seat]) -> str:
    """nginx ``location`` blocks that send ``/pNN/`` to that participant's server (WebSockets included).

    >>> print(nginx_locations([Seat("p01", 8901, "t", Path("."))]))
    location /p01/ {
        proxy_pass http://127.0.0.1:8901;
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_read_timeout 1d;
    }
    """
    blocks = []
    for seat in seats:
        blocks.append(
            f"location {seat.prefix} {{\n"
            f"    proxy_pass http://127.0.0.1:{seat.port};\n"
            "    proxy_http_version 1.1;\n"
            "    proxy_set_header Host $host;\n"
            "    proxy_set_header X-Real-IP $remote_addr;\n"
            "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
            "    proxy_set_header X-Forwarded-Proto $scheme;\n"
            "    proxy_set_header Upgrade $http_upgrade;\n"
            "    proxy_set_header Connection $connection_upgrade;\n"
            "    proxy_read_timeout 1d;\n"
            "}"
        )
    return "\n".join(blocks)


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _seats(count: int, room: Path, port_base: int) -> list[Seat]:
    names = participant_names(count)
    if not 1024 <= port_base <= 65535 - count:
        raise ValueError(f"--port-base must leave {count} ports between 1024 and 65535, got {port_base}")
    busy = [port_base + i for i in range(count) if not _port_is_free(port_base + i)]
    if busy:
        raise ValueError(f"ports in use on 127.0.0.1: {', '.join(map(str, busy))}; choose another --port-base")
    return [Seat(name, port_base + i, secrets.token_urlsafe(24), room / name) for i, name in enumerate(names)]


def _answers(seat: Seat) -> bool:
    url = f"http://127.0.0.1:{seat.port}{seat.prefix}api/status"
    request = urllib.request.Request(url, headers={"Authorization": f"token {seat.token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Stop every server's process group (its kernels with it): SIGTERM, then SIGKILL after 20 s."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def running_room(
    count: int, room: Path, port_base: int, *, threads: int = 1, python: str = sys.executable
) -> Iterator[list[tuple[Seat, subprocess.Popen[bytes]]]]:
    """Start ``count`` servers (folders under ``room``), wait until each answers, stop them all on leaving.

    Each server's log is ``room/<name>.log``.

    Raises:
        ValueError: a bad count or port base, or a port in use (nothing is started).
        RuntimeError: a server exited or did not answer within the start timeout (the others are stopped).
    """
    seats = _seats(count, room, port_base)
    room.mkdir(parents=True, exist_ok=True)
    started: list[tuple[Seat, subprocess.Popen[bytes]]] = []
    try:
        for seat in seats:
            prepare_folder(seat.folder)
            state = room / ".lab" / seat.name  # outside the participant's root: layouts and settings of their own
            env = {
                **os.environ,
                "JUPYTER_TOKEN": seat.token,
                "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads),
                "JUPYTERLAB_WORKSPACES_DIR": str((state / "workspaces").resolve()),
                "JUPYTERLAB_SETTINGS_DIR": str((state / "settings").resolve()),
                # Its own cookie secret (in the runtime folder): a cookie of A's server does not open B's.
                "JUPYTER_RUNTIME_DIR": str((state / "runtime").resolve()),
            }
            with (room / f"{seat.name}.log").open("wb") as log:
                process = subprocess.Popen(
                    server_command(seat, python), cwd=seat.folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stopped with its kernels
                )  # fmt: skip
            started.append((seat, process))
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = [seat for seat, _ in started]
        while waiting:
            for seat, process in started:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{seat.name}'s server exited with {process.returncode}; see {room / (seat.name + '.log')}"
                    )
            waiting = [seat for seat in waiting if not _answers(seat)]
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(
                    f"{', '.join(s.name for s in waiting)} did not answer within {START_TIMEOUT_S:.0f} s"
                )
            if waiting:
                time.sleep(0.5)
        yield started
    finally:
        _stop([process for _, process in started])


def format_table(seats: Sequence[Seat], base: str | None = None) -> str:
    """The table the teacher hands out: one line per participant with the link (token included).

    >>> print(format_table([Seat("p01", 8901, "abc", Path("room/p01"))]))
    participant  port   URL
    p01          8901   http://127.0.0.1:8901/p01/lab?token=abc
    """
    lines = [f"{'participant':<12} {'port':<6} URL"]
    lines += [f"{seat.name:<12} {seat.port:<6} {seat.url(base)}" for seat in seats]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="python -m mao_lab.classroom", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    room = commands.add_parser("room", help="start one JupyterLab per participant and print their links")
    room.add_argument("--participants", type=int, required=True, help=f"how many (1 to {MAX_PARTICIPANTS})")
    room.add_argument("--dir", type=Path, default=Path("room"), help="the participants' folders (default: room)")
    room.add_argument("--port-base", type=int, default=8901, help="the first participant's port (default: 8901)")
    room.add_argument("--public-url", default=None, help="the proxy's address, for the links (e.g. https://host/)")
    room.add_argument("--threads", type=int, default=1, help="threads per kernel (default: 1)")
    nginx = commands.add_parser("nginx", help="print nginx location blocks for the room's servers")
    nginx.add_argument("--participants", type=int, required=True)
    nginx.add_argument("--port-base", type=int, default=8901)
    args = parser.parse_args(argv)  # the subcommands' parsers are OneLineArgumentParsers too (argparse's default)
    try:
        if args.command == "nginx":
            names = participant_names(args.participants)
            seats = [Seat(name, args.port_base + i, "", Path(name)) for i, name in enumerate(names)]
            print(nginx_locations(seats))
            return 0
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        with running_room(args.participants, args.dir, args.port_base, threads=args.threads) as servers:
            print(format_table([seat for seat, _ in servers], args.public_url), flush=True)
            print(f"{len(servers)} servers running (logs in {args.dir}/); Ctrl-C stops them all", flush=True)
            while True:
                for seat, process in servers:
                    if process.poll() is not None:
                        raise RuntimeError(
                            f"{seat.name}'s server stopped (exit {process.returncode}); stopping the room"
                        )
                time.sleep(1)
    except ValueError as error:
        parser.error(str(error))
    except RuntimeError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped every server", file=sys.stderr)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a service manager, `kill`) stops the room as Ctrl-C does


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
