"""Files a user keeps: a run's folder swapped in whole, atomic single files, bounded reads.

Writing a folder (`write_dir`), as SQLite and git write what they keep: the files go into a new
hidden folder beside the target (``.NAME.tmp-PID-TOKEN``), each file and the folder are flushed
to disk (``fsync``), then the old folder is renamed aside (``.NAME.old-PID-TOKEN``), the new one
is renamed into place, the parent directory is flushed, and the old one is removed. A reader sees
the old complete folder or the new complete one, never a mix.

A run killed at any moment leaves at most:

- a ``.tmp-`` folder (killed while writing), or an empty ``.probe-`` folder (killed while
  `prepare` tested that the directory is writable): removed by the next run;
- an ``.old-`` folder beside the new target (killed after the swap): removed by the next run;
- an ``.old-`` folder and *no* target (killed between the two renames): `recover` renames the
  old folder back into place. The next run does so before anything else, and so does
  `xent predict` before it reads the model.

Leftovers are recognised by name and by their process id: one whose process is still alive
belongs to a run in progress and is left alone.

Reading (`read_regular`): only regular files, opened with ``O_NONBLOCK`` so that a FIFO cannot
block the open itself, checked with ``fstat`` on the opened descriptor (no race with a rename),
and never more bytes than a stated bound.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ._errors import CLIError

T = TypeVar("T")

_LEFTOVER = re.compile(r"(tmp|old|probe)-(\d+)-[0-9a-f]+")
# How long a reader or a writer waits for a live run that is between its two renames.
_SWAP_WAIT_S = 5.0


def os_error(path: str | os.PathLike, doing: str, e: OSError) -> CLIError:
    """One line for an OS error: the path, what was being done and the system's reason.

    >>> str(os_error("runs/m", "cannot write", OSError(errno.ENOSPC, "No space left on device")))
    'runs/m: cannot write (No space left on device)'
    """
    reason = e.strerror or str(e)
    return CLIError(f"{short(path)}: {doing} ({reason})")


def short(path: str | os.PathLike) -> str:
    """A path for a message: as given, but at most 200 characters (a 5000-character path is
    cut in the middle)."""
    s = os.fspath(path)
    return s if len(s) <= 200 else f"{s[:100]}...{s[-97:]} ({len(s)} characters)"


# ---------------------------------------------------------------------------------------------
# Reading


def _kind(mode: int) -> str:
    """A file type in words, for the message that refuses it."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular(path: str | os.PathLike, what: str, limit: int, *,
                 dir_fd: int | None = None, label: str | os.PathLike | None = None) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    Args:
        path: the file (relative to ``dir_fd`` when that is given).
        what: what the file should be, for the messages (``"a CSV file"``).
        limit: the largest size accepted, in bytes.
        dir_fd: an open directory to resolve ``path`` in (``os.open``'s ``dir_fd``).
        label: the path to name in messages (default ``path``).

    Returns:
        The whole file.

    Raises:
        CLIError: the file is missing, not a regular file (a directory, FIFO, device; symlinks
            are followed, so a link to ``/dev/zero`` is a character device), larger than
            ``limit``, or cannot be read; the message names the file and the reason.
        FileNotFoundError: only when ``dir_fd`` is given and the file is gone (the caller may
            retry: the directory was swapped).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = Path(d, "a.txt").write_bytes(b"hello")
    ...     read_regular(Path(d, "a.txt"), "a text file", 100)
    b'hello'
    >>> read_regular("/dev/zero", "a CSV file", 100)
    Traceback (most recent call last):
    ...
    xent.cli._errors.CLIError: /dev/zero: is a character device; expected a CSV file
    """
    name = short(label if label is not None else path)
    fd = _open_checked(path, name, what, limit, dir_fd)
    try:
        chunks, left = [], limit + 1  # one byte more: a file that grew past the limit is caught
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise CLIError(f"{name}: more than the {limit} bytes accepted for {what}")
        return data
    except OSError as e:
        raise os_error(name, "cannot read", e) from None
    finally:
        os.close(fd)


def _open_checked(path: Any, name: str, what: str, limit: int, dir_fd: int | None) -> int:
    """A blocking descriptor of ``path`` if it is a regular file of at most ``limit`` bytes
    (opened without blocking, so that a FIFO cannot hang the check); `CLIError` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0),
                     dir_fd=dir_fd)
    except FileNotFoundError:
        if dir_fd is not None:
            raise
        raise CLIError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise CLIError(f"{name}: is a directory; expected {what}") from None
    except OSError as e:
        raise os_error(name, "cannot open", e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CLIError(f"{name}: is {_kind(st.st_mode)}; expected {what}")
        if st.st_size > limit:
            raise CLIError(f"{name}: {st.st_size} bytes, more than the {limit} accepted for "
                           f"{what}")
        os.set_blocking(fd, True)
    except OSError as e:
        os.close(fd)
        raise os_error(name, "cannot read", e) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: str | os.PathLike, what: str, limit: int):
    """``path`` opened for binary reading if it is a regular file of at most ``limit`` bytes
    (the checks of `read_regular`, without reading it: for a reader that streams the file).

    Raises `CLIError` naming the file and the reason, as `read_regular` does.
    """
    fd = _open_checked(path, short(path), what, limit, None)
    try:
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file (hard links and symlinks included), or would:
    two paths that do not exist yet are compared by their resolved form.

    >>> same_file("/tmp", "/tmp/../tmp")
    True
    """
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


# ---------------------------------------------------------------------------------------------
# Writing


def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries to disk (where the OS allows opening a directory)."""
    try:
        _fsync_path(path, directory=True)
    except (PermissionError, IsADirectoryError):  # pragma: no cover - not on Linux
        pass
    except OSError as e:  # pragma: no cover - file systems that do not sync directories
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise


def write_file(path: str | os.PathLike, data: bytes) -> None:
    """Create ``path`` (it must not exist) holding ``data``, flushed to disk.

    For the files of a new folder in `write_dir`; to replace a file that others read, use
    `atomic_write`.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Replace the file ``path`` by ``data`` so that it is never seen half-written.

    The bytes go to a temporary file in the same directory, are flushed to disk, the file is
    renamed over ``path`` (`os.replace` is atomic) and the directory is flushed. A symlink at
    ``path`` is followed: the file it points to is replaced. Raises `OSError` as the system
    does; the temporary file never stays behind.
    """
    target = Path(os.path.realpath(path))
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        write_file(tmp, data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a process we may not signal exists too)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _leftovers(out: Path) -> list[tuple[str, int, Path]]:
    """``(kind, pid, path)`` of every ``.NAME.tmp-`` and ``.NAME.old-`` entry beside ``out``."""
    prefix = f".{out.name}."
    try:
        names = os.listdir(out.parent)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        m = _LEFTOVER.fullmatch(name[len(prefix):]) if name.startswith(prefix) else None
        if m:
            found.append((m.group(1), int(m.group(2)), out.parent / name))
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def recover(out: str | os.PathLike, *, clean: bool = True) -> Path | None:
    """Undo what a killed run left beside the folder ``out``; return where the folder is.

    If ``out`` is missing and a run that is no longer alive left its old folder aside (it was
    killed between its two renames), that folder is renamed back to ``out``. If the owner is
    alive (a run between its renames right now), wait up to a few seconds for ``out`` to appear.
    With ``clean``, the leftovers of dead runs are removed afterwards. Returns ``out`` when it
    exists, else the old folder to read from when it could not be renamed back (a read-only
    directory), else None.
    """
    out = Path(out)
    deadline = time.monotonic() + _SWAP_WAIT_S
    while not os.path.lexists(out):
        olds = [(pid, p) for kind, pid, p in _leftovers(out) if kind == "old"]
        if not olds:
            return None
        dead = [p for pid, p in olds if not _alive(pid)]
        if dead:
            try:
                os.rename(dead[-1], out)
                _fsync_dir(out.parent)
            except FileExistsError:
                continue  # someone else restored it: look again
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    continue
                return dead[-1]  # cannot rename here: read the old folder where it lies
            break
        if time.monotonic() > deadline:
            return olds[-1][1]
        time.sleep(0.02)
    if clean:
        for _, pid, p in _leftovers(out):
            if not _alive(pid):
                _remove(p)
    return out


@contextlib.contextmanager
def _locked(directory: Path):
    """Hold an exclusive ``flock`` on ``directory`` (serialises swaps by concurrent runs; the
    kernel releases it when the process dies). Where locking is not supported, no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _is_xent_folder(path: Path) -> bool:
    """Whether an existing folder may be replaced: empty, or holding a ``model.json``."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return not names or "model.json" in names


def prepare(out: str | os.PathLike) -> Path:
    """Check that ``out`` can receive a run's folder, before the run; return it as a `Path`.

    Creates the parent directories, restores or removes what killed runs left (`recover`), and
    raises `CLIError` (one line) when ``out`` is not a directory (a symlink is followed: the
    directory it points to is the one replaced), is a directory that holds
    other files than a model (it would be replaced whole), contains the working directory, or
    its parent cannot be written.
    """
    out = Path(out)
    if out.is_symlink():  # replace the directory it points to, keep the link
        out = Path(os.path.realpath(out))
    if out.name in ("", ".", ".."):
        raise CLIError(f"--out {short(out)}: expected a directory name for the model files "
                       "(the folder is replaced whole; give e.g. runs/model)")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CLIError(f"{short(parent)}: exists and is not a directory; expected a directory "
                       f"to hold {out.name}") from None
    except OSError as e:
        raise os_error(parent, "cannot create the directory", e) from None
    recover(out)
    try:
        st = os.stat(out)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise os_error(out, "cannot use as the output directory", e) from None
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise CLIError(f"{short(out)}: exists and is not a directory; expected a directory "
                           "for the model files")
        if not _is_xent_folder(out):
            raise CLIError(f"{short(out)}: a directory that holds other files than an xent "
                           "model; it would be replaced whole, so choose a new or empty one")
        cwd = os.path.realpath(os.getcwd())
        real = os.path.realpath(out)
        if cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
            raise CLIError(f"{short(out)}: is the working directory or contains it; the folder "
                           "is replaced whole, so choose another --out")
    probe = parent / f".{out.name}.probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:  # the real test of writability (os.access says yes to root on a read-only mount)
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as e:
        raise CLIError(f"{short(parent)}: cannot create the run's folder there, the directory "
                       f"is not writable ({e.strerror}) (for --out {short(out)})") from None
    return out


def write_dir(out: str | os.PathLike, write: Callable[[Path], T]) -> T:
    """Fill a new folder with ``write(folder)`` and swap it in as ``out``, crash-safely.

    Args:
        out: the folder to create or replace (its parent must exist; `prepare` checks).
        write: writes every file of the run into the empty folder it is given (by
            `write_file` or any other means); its return value is returned.

    Every regular file in the new folder is flushed to disk after ``write`` returns, then the
    folder, then it replaces ``out`` (see the module docstring for the renames and what a kill
    at any moment leaves). An exception from ``write`` or an OS error removes the new folder
    and leaves ``out`` as it was; OS errors become a one-line `CLIError`.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = Path(d, "run")
    ...     for text in (b"{}", b"{ }"):
    ...         write_dir(out, lambda f: write_file(f / "model.json", text))
    ...     (out / "model.json").read_bytes(), sorted(os.listdir(d))
    (b'{ }', ['run'])
    """
    out = prepare(out)
    parent, pid = out.parent, os.getpid()
    while True:
        tmp = parent / f".{out.name}.tmp-{pid}-{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp)
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise os_error(tmp, "cannot create the new output directory", e) from None
    try:
        result = write(tmp)
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                _fsync_path(os.path.join(root, name))
            _fsync_dir(root)
        with _locked(parent):
            recover(out)
            old = None
            if os.path.lexists(out):
                old = parent / f".{out.name}.old-{pid}-{secrets.token_hex(4)}"
                os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                if old is not None:
                    with contextlib.suppress(OSError):
                        os.rename(old, out)
                raise
            _fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return result
    except OSError as e:
        raise os_error(out, "cannot write the output directory", e) from None
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


# ---------------------------------------------------------------------------------------------
# JSON with bounded nesting

_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.S)  # linear: always matches


def json_depth(data: bytes) -> int:
    """How deeply the arrays and objects of JSON text nest (brackets inside strings ignored).

    Computed without parsing, so that a file nested 100,000 deep is refused before
    `json.loads` would recurse into it.

    >>> json_depth(b'{"a": [1, {"b": "[[["}]}')
    3
    >>> json_depth(b"[" * 100000)
    100000
    """
    import numpy as np

    skeleton = np.frombuffer(_JSON_STRING.sub(b"", data), dtype=np.uint8)
    step = (np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64)
            - np.isin(skeleton, (ord("]"), ord("}"))))
    return int(np.cumsum(step).max(initial=0))


def load_json(data: bytes, label: str | os.PathLike, max_depth: int) -> object:
    """Parse UTF-8 JSON text nested at most ``max_depth`` deep; `CLIError` (one line) if not.

    >>> load_json(b'{"a": [1, 2]}', "m.json", 4)
    {'a': [1, 2]}
    >>> load_json(b"[" * 5000 + b"]" * 5000, "m.json", 64)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xent.cli._errors.CLIError: m.json: JSON nested 5000 levels deep, more than the 64 accepted...
    """
    import json

    name = short(label)
    depth = json_depth(data)
    if depth > max_depth:
        raise CLIError(f"{name}: JSON nested {depth} levels deep, more than the {max_depth} "
                       "accepted; the file is not an xent model")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise CLIError(f"{name}: not UTF-8 text; the file is corrupted") from None
    except json.JSONDecodeError as e:
        raise CLIError(f"{name}: not valid JSON ({e.msg} at line {e.lineno}, column "
                       f"{e.colno}); the file is truncated or corrupted") from None
    except RecursionError:  # pragma: no cover - the depth is checked above
        raise CLIError(f"{name}: JSON nested too deeply") from None
