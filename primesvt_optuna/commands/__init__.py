"""One module per `primesvt` subcommand (see cli.py), and the checks they share."""

from __future__ import annotations

from pathlib import Path

from ..errors import PrimeSVTError


def output_folder(path: str | Path, flag: str = "--output") -> Path:
    """A folder a command will write into, checked before any work: not a file, and not under one."""
    folder = Path(path).expanduser()
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                raise PrimeSVTError(f"{flag} {folder}: {part} is a file, not a folder: give a folder path")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrimeSVTError(f"{flag} {folder}: cannot create it ({exc.strerror or exc})") from None
    return folder


def output_file(path: str | Path, flag: str, suffixes: tuple[str, ...] | None = None, *,
                force: bool | None = None) -> Path:
    """A file a command will write, checked before any work: not a folder, its folder not a file,
    (``suffixes``) a format the writer knows, and (``force=False``) not there already."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise PrimeSVTError(f"{flag} {file} is a folder: give a file name")
    output_folder(file.parent, flag)
    if suffixes is not None and file.suffix.lower() not in suffixes:
        raise PrimeSVTError(f"{flag} {file}: unknown format {file.suffix or '(no suffix)'!r}: use one of {', '.join(suffixes)}")
    if force is False and file.exists():
        raise PrimeSVTError(f"{flag} {file} exists: pass --force to overwrite it, or give another path")
    return file
