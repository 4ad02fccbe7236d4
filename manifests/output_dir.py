"""Outputs that never lose a file the tool did not write: a tool never deletes or replaces what it
did not create, nor one of its own inputs.

Folders (hjprune-synth, hjprune-demo, hjprune-export --hf, hjprune-import-hf): a tool writes into a
folder that is new, empty, or holds only its own earlier output. It recognises that output by a marker
file ``.TOOL`` in the folder, a JSON object ``{"tool": TOOL, "entries": [top-level names it wrote]}``,
each name recorded before it is written (:func:`own`). New content is written into a fresh temporary
sibling (``tempfile.mkdtemp``) and renamed in; an existing entry is replaced only if the marker lists it.
Anything else is refused with a one-line ``FileExistsError`` naming the folder.

Files in a folder the user shares with other tools (hjprune-manifest, hjprune-labels, hjprune-spm):
:func:`check_files` refuses, before anything is written, a run that would write over one of its inputs,
or over any existing file without ``--overwrite``.

Every file is written with the mode ``open()`` would give it: 0666 less the umask for a new file, the
old mode for a replaced one (``tempfile``'s own 0600 never reaches an output).
Pure standard library: the data tools and the plugin's CLIs use it without torch.
"""

import contextlib
import json
import os
import shutil
import tempfile
import threading
from typing import Callable, Iterator, List, Mapping, Optional, Sequence

_LOCK = threading.RLock()  # the demo records entries from several threads (its parallel points)


def _umask() -> int:
    """The process's umask, read without changing it where the kernel says it (Linux >= 4.7): setting it
    to read it would give a file another thread creates meanwhile the wrong mode."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the umask."""
    return 0o666 & ~_umask()


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _names(paths: Sequence[str]) -> str:
    """The first five of ``paths``, and how many in all if more."""
    return ", ".join(paths[:5]) + (f", ... ({len(paths)} in all)" if len(paths) > 5 else "")


def entries(path: str, tool: str) -> List[str]:
    """The top-level entries that ``tool``'s marker in ``path`` lists ([] without a marker)."""
    marker = os.path.join(path, f".{tool}")
    try:
        with open(marker) as f:
            data = json.load(f)
    except FileNotFoundError:
        return []
    except json.JSONDecodeError as e:
        raise ValueError(f"{marker}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("tool") != tool or not isinstance(data.get("entries"), list):
        raise ValueError(f'{marker}: expected {{"tool": "{tool}", "entries": [...]}}')
    return list(data["entries"])


def record(path: str, tool: str, names: Sequence[str], keep: bool = True) -> None:
    """Write ``tool``'s marker in ``path``: ``names`` (and, with ``keep``, the entries it listed)."""
    with _LOCK:
        listed = set(names) | (set(entries(path, tool)) if keep else set())
        listed.discard(f".{tool}")
        fd, tmp = tempfile.mkstemp(dir=path, prefix=f".{tool}.tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump({"tool": tool, "entries": sorted(listed)}, f, indent=1)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, os.path.join(path, f".{tool}"))


def own(path: str, tool: str, name: str) -> str:
    """Record ``name`` as ``tool``'s entry of the folder ``path`` before the tool writes it, and return
    ``path/name``; refused if ``path/name`` exists and the marker does not list it (a user's file, put
    there after the tool claimed the folder). The marker thus lists exactly what the tool wrote."""
    dst = os.path.join(path, name)
    with _LOCK:
        if os.path.lexists(dst) and name not in entries(path, tool):
            raise FileExistsError(f"{dst}: was not written by {tool}; move it away or choose another folder")
        record(path, tool, [name])
    return dst


def check(path: str, tool: str, overwrite: bool, what: str = "earlier output") -> List[str]:
    """Refuse ``path`` unless it is missing, empty, or holds only ``tool``'s earlier output (and then
    only with ``overwrite``); returns the entries of that earlier output."""
    if not os.path.lexists(path):
        return []
    if not os.path.isdir(path):
        raise FileExistsError(f"{path}: is not a folder; choose a new or empty folder")
    own = entries(path, tool)
    present = sorted(n for n in os.listdir(path) if n != f".{tool}")
    foreign = [n + "/" if os.path.isdir(os.path.join(path, n)) else n for n in present if n not in own]
    if foreign:
        shown = _names(foreign)
        raise FileExistsError(f"{path}: holds files this tool did not write ({shown}); choose a new or empty folder")
    if present and not overwrite:
        raise FileExistsError(f"{path}: already holds {what} (pass --overwrite to replace it)")
    return own


def claim(path: str, tool: str, overwrite: bool, what: str = "earlier output") -> List[str]:
    """``check`` ``path``, then create it with ``tool``'s marker; returns the earlier entries."""
    own = check(path, tool, overwrite, what)
    os.makedirs(path, exist_ok=True)
    record(path, tool, own)
    return own


@contextlib.contextmanager
def staging(path: str) -> Iterator[str]:
    """A fresh empty folder beside ``path`` (same file system) to write its new content in; whatever
    is left of it when the block ends is removed (it is the tool's own: mkdtemp made it)."""
    real = os.path.realpath(path)
    os.makedirs(os.path.dirname(real), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(real), prefix=f".{os.path.basename(real)}.tmp-")
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would otherwise become the output's mode
    try:
        yield tmp
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp)


def replace_entry(path: str, name: str, src: str, tool: str) -> None:
    """Rename ``src`` to ``path/name`` and record it; an existing ``path/name`` is replaced only if
    ``tool``'s marker in ``path`` lists it."""
    dst = os.path.join(path, name)
    os.makedirs(path, exist_ok=True)
    old = None
    if os.path.lexists(dst):
        if name not in entries(path, tool):
            raise FileExistsError(f"{dst}: was not written by {tool}; move it away or choose another folder")
        old = tempfile.mkdtemp(dir=path, prefix=f".{name}.old-")
        os.replace(dst, os.path.join(old, name))
    record(path, tool, [name])  # before the rename: a crash leaves no unlisted entry
    os.replace(src, dst)
    if old:
        shutil.rmtree(old)


def publish(tmp: str, path: str, tool: str, overwrite: bool, what: str = "earlier output") -> None:
    """Make the folder ``tmp`` (from ``staging(path)``) the content of ``path``: renamed to ``path``
    if that is missing, else moved in entry by entry over ``tool``'s earlier output, whose entries
    missing from ``tmp`` are removed. Checks ``path`` again: it may have changed meanwhile."""
    names = sorted(os.listdir(tmp))
    old = check(path, tool, overwrite, what)
    if not os.path.lexists(path):
        record(tmp, tool, names)
        os.rename(tmp, path)  # all or nothing
        return
    for name in names:
        replace_entry(path, name, os.path.join(tmp, name), tool)
    for name in set(old) - set(names):
        if os.path.lexists(os.path.join(path, name)):
            _remove(os.path.join(path, name))
    record(path, tool, names, keep=False)


def check_files(outputs: Sequence[str], overwrite: bool, inputs: Optional[Mapping[str, str]] = None) -> None:
    """Refuse, before anything is written, a run that would write one of ``outputs`` twice, over a
    folder, over one of its ``inputs`` ({path: what it is}; also through a symlink or a hard link, with
    ``overwrite`` too), or over any existing file without ``overwrite``. Every output is checked."""
    seen = set()
    for out in outputs:
        parent = os.path.dirname(os.path.abspath(out))
        while not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise FileExistsError(f"{parent}: is not a folder (expected a folder to write {os.path.basename(out)} in)")
        if os.path.isdir(out):
            raise FileExistsError(f"{out}: is a folder (expected a file to write)")
        if os.path.realpath(out) in seen:
            raise ValueError(f"{out}: this run would write it twice (expected each output once)")
        seen.add(os.path.realpath(out))
    written = {}  # (device, inode) of every existing output: an input is one of them by any name
    for out in outputs:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(out)
            written[(st.st_dev, st.st_ino)] = out
    for path, what in (inputs or {}).items() if written else ():
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in written:
                raise ValueError(f"{written[st.st_dev, st.st_ino]}: output would overwrite an input of this run ({what})")
    existing = [out for out in outputs if os.path.lexists(out)]
    if existing and not overwrite:
        if len(existing) == 1:
            raise FileExistsError(f"{existing[0]}: already exists (pass --overwrite to replace it)")
        raise FileExistsError(f"{_names(existing)}: already exist (pass --overwrite to replace them)")


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a fresh temporary name (never a user's file) beside ``path``, then rename it to
    ``path``: never a half-written output; the temporary file is removed if ``write`` fails. The file
    gets the mode ``open()`` would give it: ``path``'s own if it exists, else 0666 less the umask."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            mode = new_file_mode()
        os.chmod(tmp, mode)  # after write: it may have put another file at tmp (os.replace)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
