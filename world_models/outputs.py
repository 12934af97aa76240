"""What a command may write, and what it may replace: the one owner of that rule.

Every folder LeWorld creates as a whole (a dataset, a training run, an agent run) carries a
marker file, ``.leworld.json``, that says what wrote it. A folder is replaced (``--overwrite``)
only when it is empty or carries a marker of the expected kind; anything else (the working
directory, a model folder, a user's own files) is refused with a message, so no flag can make
LeWorld delete what it did not write. A single output file (``--json``, ``--out x.lq40``) is
replaced only when it is a previous result of the same kind, or with ``--overwrite``.

Checks run before any long work: an output that cannot be written fails in the first second,
not after an hour of training.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from world_models.errors import ArgumentError, LeWorldError
from world_models.files import atomic_write_bytes

MARKER = ".leworld.json"
KINDS = ("dataset", "train-run", "agent-run", "distill-run", "refit-run", "ppo-plan-run")


def write_marker(folder: Path, kind: str) -> None:
    """Mark ``folder`` as written by LeWorld, as a ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise ArgumentError(f"kind must be one of {KINDS}, got {kind!r}")
    atomic_write_bytes(Path(folder) / MARKER, json.dumps({"written_by": "leworld", "kind": kind}).encode())


def marker_kind(folder: Path) -> str | None:
    """The kind ``folder``'s marker names, or None (no marker, or not one LeWorld wrote)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != "leworld":
        return None
    kind = data.get("kind")
    return kind if kind in KINDS else None


def _nearest_existing(path: Path) -> Path:
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    return existing


def check_creatable(path: Path, what: str) -> None:
    """``path`` does not exist yet and can be created: its nearest existing parent is a writable folder.

    Raises:
        LeWorldError: naming ``what`` (the option, e.g. ``--out``) and the path.
    """
    if str(path) == "":
        raise LeWorldError(f"{what}: an empty path; name a file or folder")
    existing = _nearest_existing(Path(path))
    if not existing.is_dir():
        raise LeWorldError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LeWorldError(f"{what} {path}: {existing} is not writable")


def check_output_folder(path: Path, what: str, kind: str, overwrite: bool = False, reuse: bool = False) -> None:
    """``path`` may be written as a ``kind`` folder.

    A missing folder must be creatable. An existing one must be a folder and writable; then it is
    accepted when empty, when ``reuse`` (a run that continues, ``--resume``), or when ``overwrite``
    and it carries a ``kind`` marker. Anything else is refused.

    Raises:
        LeWorldError: naming ``what``, the path and what to do instead.
    """
    if str(path) == "":
        raise LeWorldError(f"{what}: an empty path; name a folder")
    path = Path(path)
    if not path.exists():
        check_creatable(path, what)
        return
    if not path.is_dir():
        raise LeWorldError(f"{what} {path}: exists and is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise LeWorldError(f"{what} {path}: folder is not writable")
    if reuse or not any(path.iterdir()):
        return
    found = marker_kind(path)
    if not overwrite:
        raise LeWorldError(f"{what} {path}: exists and is not empty; pass --overwrite to replace it, or pick another")
    if found != kind:
        what_it_is = f"a LeWorld {found}" if found else "not a folder LeWorld wrote (no .leworld.json marker)"
        raise LeWorldError(
            f"{what} {path}: refusing to replace it: it is {what_it_is}, and --overwrite replaces only a {kind} "
            "folder LeWorld wrote. Remove it yourself or pick another path"
        )


def replace_folder(path: Path, kind: str) -> None:
    """Delete ``path`` when :func:`check_output_folder` allows replacing it (empty, or a ``kind`` marker).

    Raises:
        LeWorldError: ``path`` is neither (nothing is deleted).
    """
    path = Path(path)
    if not path.exists():
        return
    if any(path.iterdir()) and marker_kind(path) != kind:
        raise LeWorldError(f"{path}: refusing to delete a folder that is not a LeWorld {kind}")
    shutil.rmtree(path)


def check_output_file(
    path: Path, what: str, overwrite: bool = False, is_previous: Callable[[Path], bool] | None = None
) -> None:
    """``path`` may be written as a file: missing and creatable, or an existing file that is a previous
    result (``is_previous``) or may be replaced (``overwrite``); never a folder.

    Raises:
        LeWorldError: naming ``what`` and the path.
    """
    if str(path) == "":
        raise LeWorldError(f"{what}: an empty path; name a file")
    path = Path(path)
    if path.is_dir():
        raise LeWorldError(f"{what} {path}: is a folder; name a file")
    if not path.exists():
        check_creatable(path, what)
        return
    if not os.access(path.parent.absolute(), os.W_OK | os.X_OK):
        raise LeWorldError(f"{what} {path}: its folder is not writable")
    if overwrite or (is_previous is not None and is_previous(path)):
        return
    raise LeWorldError(
        f"{what} {path}: exists and is not a previous result of this command; pass --overwrite to replace it"
    )


def is_json_with(key: str, value: str) -> Callable[[Path], bool]:
    """A test for :func:`check_output_file`: the file is a JSON object whose ``key`` is ``value``."""

    def test(path: Path) -> bool:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return False
        return isinstance(data, dict) and data.get(key) == value

    return test


@contextlib.contextmanager
def removed_if_failed(folder: Path) -> Iterator[Path]:
    """Create ``folder`` (and missing parents) if missing; if the block fails, remove what was created
    here when it holds only empty folders and the marker (a failed command leaves no empty run folder
    behind; it never removes a file it did not write, nor a folder that existed before)."""
    folder = Path(folder)
    top = None  # the outermost folder created here
    for candidate in (folder, *folder.absolute().parents):
        if candidate.exists():
            break
        top = candidate
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if top is not None:
            _remove_if_empty(Path(top))
        raise


def _remove_if_empty(folder: Path) -> None:
    files = [p for p in folder.rglob("*") if not p.is_dir() and p.name != MARKER]
    if files:
        return
    with contextlib.suppress(OSError):
        shutil.rmtree(folder)
