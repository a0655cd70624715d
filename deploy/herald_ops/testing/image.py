"""What ``deploy/Dockerfile`` builds from, read without a Docker engine: its stages, their ``COPY``
sources, and which paths the ``.dockerignore`` lets into the build context.

Used by ``tests/unit/test_deploy.py`` and by ``.ci/replay-image-builder``, which runs the builder stage's
own commands in a temporary directory.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path, PurePosixPath

from herald_ops.testing.stack import ROOT

DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def dockerfile_stages(text: str | None = None) -> dict[str, list[str]]:
    """Each named stage's instructions, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text() if text is None else text
    instructions = [
        line.strip()
        for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.strip() and not line.startswith("#")
    ]
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for instruction in instructions:
        if match := re.fullmatch(r"FROM \S+ AS (\w+)", instruction):
            current = stages.setdefault(match.group(1), [])
        elif current is not None:
            current.append(instruction)
    return stages


def copy_sources(instructions: list[str]) -> list[str]:
    """The build-context sources of ``COPY`` instructions (not those ``--from=`` another stage)."""
    return [
        source
        for instruction in instructions
        if instruction.startswith("COPY ") and "--from=" not in instruction
        for source in instruction.split()[1:-1]
    ]


def dockerignore_admits(path: str) -> bool:
    """Whether the build context holds ``path`` (relative to the repository): the last .dockerignore rule
    that matches it or one of its parents decides, and a ``!`` rule lets it in."""
    candidates = [path, *(str(parent) for parent in PurePosixPath(path).parents if str(parent) != ".")]
    admitted = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        pattern = rule.removeprefix("!").removesuffix("/**")
        if pattern == "**" or any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            admitted = rule.startswith("!")
    return admitted


def context_files(source: str) -> list[Path]:
    """The files under ``source`` (a file or a directory) that the build context holds."""
    path = ROOT / source
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [file for file in files if dockerignore_admits(str(file.relative_to(ROOT)))]
