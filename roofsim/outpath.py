"""Output paths checked before the work that fills them: a missing folder or a path that is a folder is a one-line
error up front, not a traceback after a search has run."""

from __future__ import annotations

import os
from pathlib import Path

from roofsim.errors import UserError


def check_output_file(path: str | Path, what: str) -> Path:
    """A file path that can be written: its folder exists, and it is not itself a folder. `what` names the option,
    e.g. "-o"."""
    p = Path(path)
    if str(path) == "":
        raise UserError(f"{what} is empty: give a file name, e.g. out.json")
    if p.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder: give a file name, e.g. {p / 'out.json'}")
    folder = p.parent
    if not folder.is_dir():
        raise UserError(
            f"{what} {str(path)!r}: folder {str(folder)!r} does not exist; create it first or write elsewhere"
        )
    if not os.access(folder, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{what} {str(path)!r} cannot be written (no permission); write elsewhere")
    return p


def check_output_dir(path: str | Path, what: str) -> Path:
    """A folder that exists or can be created: not a file, and its nearest existing parent is a writable folder."""
    p = Path(path)
    if str(path) == "":
        raise UserError(f"{what} is empty: give a folder, e.g. results")
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {str(path)!r} is a file, not a folder: give a folder (created if missing)")
    base = next((a for a in (p, *p.parents) if a.exists()), Path("."))
    if not base.is_dir():
        raise UserError(
            f"{what} {str(path)!r}: {str(base)!r} is a file, so the folder cannot be created there"
        )
    if not os.access(base, os.W_OK):
        raise UserError(
            f"{what} {str(path)!r} cannot be written (no permission in {str(base)!r}); write elsewhere"
        )
    return p
