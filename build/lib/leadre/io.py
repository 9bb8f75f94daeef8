"""Atomic outputs: a step either replaces its output whole or leaves the old one exactly as it was."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _sibling(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.name}.{tag}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_file(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `target`; it becomes `target` by rename only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it replaces `target` (old contents removed).

    Two renames, not one: POSIX cannot swap a non-empty folder atomically. A crash between them leaves the previous
    folder intact under a `.NAME.old-*` name rather than losing it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        old = _sibling(target, "old")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(target: Path | str, payload: Any) -> None:
    with atomic_file(target) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def portable_path(path: Path | str, root: Path | str) -> str:
    """`path` as written into an output: relative to the project `root` when inside it, so the output's bytes (and
    its DVC hash) do not depend on where the repository was cloned; an outside path stays as it is."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)
