"""Files and run folders written in one step: a reader sees the old one or the new one, never half of one."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["FolderBusyError", "FolderLock", "publish_folder", "recover_folder", "staging_folder", "write_atomically"]


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place in one step.

    If ``write`` fails, the old file (if any) is left as it was and the temporary file is removed.
    The new file is flushed to disk before the move, so a crash or power cut cannot leave it empty,
    and it gets the permissions of any file made under the process's umask (``mkstemp`` would
    leave it readable by its owner only).

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "a.txt"
    >>> write_atomically(target, lambda tmp: tmp.write_text("one")).read_text()
    'one'
    >>> def fail(tmp):
    ...     tmp.write_text("half")
    ...     raise OSError("disk full")
    >>> write_atomically(target, fail)
    Traceback (most recent call last):
    ...
    OSError: disk full
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('one', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: set it straight back
    os.umask(mask)
    return mask


class FolderBusyError(OSError):
    """Another process holds the lock of a run folder (it is writing there right now)."""


class FolderLock:
    """An exclusive, non-blocking lock on a run folder, held while a run writes there.

    The lock is an ``flock`` on a hidden file beside the folder (``.<name>.lock``), so it outlives
    swapping the folder itself, and the operating system releases it when the holder exits or is
    killed: a crashed run never leaves a folder locked.  ``wait=True`` waits for the holder instead
    (for short critical sections, such as rewriting a shared table).  A second run into the same folder gets
    :class:`FolderBusyError` at once, naming the process that holds it, instead of interleaving its
    files with the first run's.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "run"
    >>> with FolderLock(folder):
    ...     with FolderLock(folder):
    ...         pass
    Traceback (most recent call last):
    ...
    mao_lab._files.FolderBusyError: ... is in use by another run (pid ...); wait for it to finish or write elsewhere
    """

    def __init__(self, folder: str | os.PathLike[str], *, wait: bool = False) -> None:
        self.folder = Path(folder)
        self.wait = wait
        self.path = lock_path(self.folder)
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        import fcntl  # POSIX only, as is the rest of the lab's process handling
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderBusyError(
                f"{self.folder} is in use by another run ({holder}); wait for it to finish or write elsewhere"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def lock_path(folder: Path) -> Path:
    """The lock file of a run folder: a hidden file beside it."""
    return folder.parent / f".{folder.name}.lock"


def staging_folder(folder: Path) -> Path:
    """A new, empty hidden folder on the file system of ``folder``'s entries (so they can be renamed into place).

    That is beside ``folder``, or inside it when ``folder`` is a mount point: the folder beside it is then
    on another file system, and :func:`publish_folder` fills the mount point in place.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    where = folder if _is_mount_point(folder) else folder.parent
    staged = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=where))
    os.chmod(staged, 0o777 & ~_umask())  # mkdtemp makes it private; the run folder it becomes should not be
    return staged


def _is_mount_point(folder: Path) -> bool:
    """Whether ``folder`` is a mount point, bind mounts of the same file system included (``os.path.ismount``
    compares devices, so it misses those; Linux lists every mount point in ``/proc/self/mountinfo``)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    if os.path.ismount(folder):
        return True
    try:
        lines = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    resolved = str(folder.resolve())
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4 and re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]) == resolved:
            return True
    return False


def publish_folder(staged: Path, folder: Path) -> Path:
    """Replace ``folder`` by ``staged`` (a folder from :func:`staging_folder`) so that no reader sees a mix of the two.

    The old folder is renamed aside, the staged one renamed into place, then the old one removed.
    A crash between the two renames leaves the old folder as ``.<name>.old-*``; the next
    :func:`recover_folder` (run under the folder's lock) puts it back.  Call with the lock held.

    A folder that cannot be renamed (a mount point, a folder in use) is filled in place instead: its
    entries are moved aside, the staged ones moved in (copied where they lie on another file system),
    and only then are the old ones removed; if that fails, the old entries are put back.
    """
    import shutil

    old = None
    if folder.exists():
        if staged.parent == folder or _is_mount_point(folder):
            _replace_contents(staged, folder)
            return folder
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        try:
            os.replace(folder, old)  # replaces the empty placeholder made by mkdtemp
        except OSError:  # a mount point or a folder in use cannot be renamed: fill it in place
            old.rmdir()
            _replace_contents(staged, folder)
            return folder
    os.replace(staged, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


# Entries of a folder filled in place that are never moved: the publisher's own hidden folders, and what a
# file system keeps at its root.
_KEPT_IN_PLACE = ("lost+found",)


def _own_entry(folder: Path, entry: Path) -> bool:
    hidden = (f".{folder.name}.partial-", f".{folder.name}.old-", f".{folder.name}.swap-")
    return entry.name.startswith(hidden) or entry.name in _KEPT_IN_PLACE


def _replace_contents(staged: Path, folder: Path) -> None:
    """Fallback of :func:`publish_folder`: ``folder``'s entries become ``staged``'s, ``folder`` itself stays.

    Step 1 moves the old entries into a hidden ``.<name>.old-*`` folder inside ``folder`` (same file system:
    renames); it is then renamed ``.<name>.swap-*``, which marks step 2: moving the staged entries in.  A
    failure in either step puts the old entries back; a process killed during step 1 or step 2 is undone or
    finished by :func:`recover_folder`, so the finished run is never lost.
    """
    import shutil

    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder))
    landed: list[Path] = []
    try:
        for entry in sorted(folder.iterdir()):
            if entry != staged and not _own_entry(folder, entry):
                os.replace(entry, aside / entry.name)
        swap = aside.with_name(aside.name.replace(".old-", ".swap-", 1))
        os.replace(aside, swap)
        aside = swap
        for entry in sorted(staged.iterdir()):
            target = folder / entry.name
            _move_across(entry, target)
            landed.append(target)
    except BaseException:
        for target in landed:  # undo: the new entries go back (or, copied from afar, go), the old ones come back
            try:
                os.replace(target, staged / target.name)
            except OSError:
                _remove(target)
        for entry in aside.iterdir():
            if not (folder / entry.name).exists():
                os.replace(entry, folder / entry.name)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)


def _move_across(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; across file systems (``EXDEV``), copy it beside ``target`` and rename that."""
    import errno
    import shutil

    try:
        os.replace(source, target)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    copy = target.with_name(f".{target.name}.copy-{os.getpid()}")
    try:
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, copy, symlinks=True)
        else:
            shutil.copy2(source, copy, follow_symlinks=False)
        os.replace(copy, target)
    finally:
        _remove(copy)


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def recover_folder(folder: Path) -> None:
    """Undo what a killed run left beside ``folder``: staging folders, and an old folder renamed aside.

    In a folder filled in place (a mount point), a publication killed while moving the old entries aside
    is undone, and one killed while moving the new entries in is finished.
    Call with the folder's lock held (then no other run is using these hidden folders).
    """
    import shutil

    if not folder.parent.is_dir():
        return
    olds = sorted(folder.parent.glob(f".{folder.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not folder.exists():
        os.replace(olds.pop(), folder)  # killed between the two renames of publish_folder
    for leftover in [*olds, *folder.parent.glob(f".{folder.name}.partial-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    if folder.is_dir() and not folder.is_symlink():
        _recover_in_place(folder)


def _recover_in_place(folder: Path) -> None:
    import shutil

    partials = sorted(folder.glob(f".{folder.name}.partial-*"), key=lambda p: p.stat().st_mtime)
    for swap in folder.glob(f".{folder.name}.swap-*"):  # killed in step 2: the old entries are all aside
        if partials:
            for entry in sorted(partials[-1].iterdir()):  # the newest staging folder was being moved in
                _move_across(entry, folder / entry.name)
        shutil.rmtree(swap, ignore_errors=True)
    for aside in folder.glob(f".{folder.name}.old-*"):  # killed in step 1: put the old entries back
        for entry in aside.iterdir():
            if not (folder / entry.name).exists():
                os.replace(entry, folder / entry.name)
        shutil.rmtree(aside, ignore_errors=True)
    for leftover in folder.glob(f".{folder.name}.partial-*"):
        shutil.rmtree(leftover, ignore_errors=True)
