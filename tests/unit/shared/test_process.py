"""shared.process: every Herald process serves with the garbage collector set for a server, on uvloop."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from shared.process import YOUNG_THRESHOLD

#: Run in a fresh interpreter, so this test neither sees nor leaves another test's collector settings.
PROBE = textwrap.dedent(
    """
    import asyncio, gc, json
    from shared.process import run

    print(json.dumps({"before": gc.get_threshold(), "frozen_before": gc.get_freeze_count()}))

    async def main():
        loop = asyncio.get_running_loop()
        print(json.dumps({
            "inside": gc.get_threshold(),
            "frozen": gc.get_freeze_count(),
            "enabled": gc.isenabled(),
            "loop": type(loop).__module__,
        }))

    run(main())
    """
)


def test_run_freezes_start_up_and_raises_the_young_threshold_before_the_loop_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    before, inside = (json.loads(line) for line in out.stdout.splitlines())
    assert before["frozen_before"] == 0
    assert before["before"][0] < YOUNG_THRESHOLD
    # The older generations keep CPython's thresholds; only the young one is raised.
    assert inside["inside"] == [YOUNG_THRESHOLD, *before["before"][1:]]
    # Start-up's objects (the modules imported so far) are in the permanent generation.
    assert inside["frozen"] > 10_000
    # The collector stays on: a closed connection's objects form cycles only it frees.
    assert inside["enabled"] is True
    assert inside["loop"].startswith("uvloop")


#: Every process's entry point, and the function of shared.process it must call before serving.
ENTRY_POINTS = {
    "gateway/__main__.py": "run",
    "gateway/api/__main__.py": "tune_garbage_collector",
    "worker/__main__.py": "run",
    "worker/delivery/__main__.py": "run",
}


def test_every_entry_point_serves_through_shared_process() -> None:
    root = Path(__file__).resolve().parents[3]
    for relative, function in ENTRY_POINTS.items():
        tree = ast.parse((root / relative).read_text())
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "shared.process"
            for alias in node.names
        }
        called = {
            node.func.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert function in imported & called, f"{relative} does not call shared.process.{function}"
