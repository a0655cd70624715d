"""Docs that match the code: every setting is in the README, every console script is documented."""

from __future__ import annotations

import tomllib

from herald_ops.testing.stack import ROOT
from shared.settings import ENV_PREFIX
from worker.delivery.settings import DeliverySettings


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        f"{ENV_PREFIX}{name.upper()}"
        for name in DeliverySettings.model_fields  # the shared settings and herald-delivery's
        if f"`{ENV_PREFIX}{name.upper()}`" not in readme
    ]
    assert not missing, f"README's configuration table lacks {missing}"


def test_readme_documents_every_command() -> None:
    readme = (ROOT / "README.md").read_text()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert all(f"`{name}" in readme for name in scripts)
    from herald_ops.cli import build_parser

    subcommands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert all(f"`herald {name}" in readme for name in subcommands)
