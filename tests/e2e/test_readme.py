"""The README's own commands, in order, in a fresh copy of the project: the quick start and a
newcomer's first tenant (``<!-- walkthrough -->`` blocks), so the README cannot drift from what
runs.

Each command line runs in bash in the copy's folder, after the ``. …`` and ``export …`` lines
before it (as in one terminal), and must succeed; a comment line right after a command that
quotes its output (no ``…`` in it) must be in that output. ``make run`` runs what the Makefile's
``run`` recipe runs, in the background, on a free port instead of 8080 (the copy shares this
project's virtualenv, which ``make`` would reinstall); ``make test`` is this very run, and is
skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.payloads import ROOT
from testkit.service import free_port
from testkit.waiting import DEADLINE, eventually_blocking

WALKTHROUGH = re.compile(r"<!-- walkthrough -->\n```sh\n(.*?)```", re.S)
RUN_RECIPE = "\t$(BIN)/mimeeq-connector serve --config $(CONFIG) --host $(HOST)\n"


def blocks() -> list[list[str]]:
    """The walkthrough blocks, as lines with their continuations joined."""
    found = []
    for block in WALKTHROUGH.findall((ROOT / "README.md").read_text()):
        found.append(block.replace("\\\n", " ").splitlines())
    return found


def copy_of_project(folder: Path) -> Path:
    """The files git knows (committed or not, ignored ones left out), as a fresh clone has them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    (folder / ".venv").symlink_to(ROOT / ".venv")
    return folder


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    if not (ROOT / ".git").exists():
        pytest.skip("needs the project's git checkout to copy it")
    yield copy_of_project(tmp_path / "clone")


def shell(folder: Path, setup: list[str], command: str) -> subprocess.CompletedProcess[str]:
    script = "\n".join(["set -euo pipefail", *setup, command])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "CONNECTOR"))}
    return subprocess.run(
        ["bash", "-c", script], cwd=folder, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_readme_walkthrough_runs_as_written(project: Path) -> None:
    assert RUN_RECIPE in (project / "Makefile").read_text(), "make run is not what this runs"
    port = free_port()
    server: subprocess.Popen[bytes] | None = None
    setup: list[str] = []
    try:
        for lines in blocks():
            last = ""  # the output of the command before
            for line in lines:
                if line.startswith("#"):
                    quoted = line[2:]
                    if quoted and "…" not in quoted and '"eventId"' not in quoted:
                        assert quoted in last, f"README says {quoted!r}; it printed {last!r}"
                    continue
                command = (
                    line.split("  #")[0].strip().replace("localhost:8080", f"127.0.0.1:{port}")
                )
                if command in ("make test", ""):
                    continue
                if command == "make run":
                    server = start_server(project, port)
                    continue
                if command.startswith((". ", "export ")):
                    setup.append(command)
                    continue
                last = run(project, setup, command)
    finally:
        if server is not None:
            server.terminate()
            assert server.wait(30) == 0


def run(folder: Path, setup: list[str], command: str) -> str:
    """Run one command; a file the service writes (``cat``) may take a moment to appear."""
    deadline = time.monotonic() + (DEADLINE if command.startswith("cat ") else 0)
    while True:
        done = shell(folder, setup, command)
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def start_server(folder: Path, port: int) -> subprocess.Popen[bytes]:
    with (folder / "server.log").open("wb") as log:  # the child keeps its own copy open
        server = subprocess.Popen(
            [str(folder / ".venv" / "bin" / "mimeeq-connector"), "serve", "--config",
             "config.example.yaml", "--host", "127.0.0.1", "--port", str(port)],
            cwd=folder, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def ready() -> bool:
        assert server.poll() is None, (folder / "server.log").read_text()
        done = shell(folder, [], f"curl -sf http://127.0.0.1:{port}/readyz")
        return done.returncode == 0

    eventually_blocking(ready)
    return server
