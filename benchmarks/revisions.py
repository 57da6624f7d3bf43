"""The code of two revisions side by side, for the before/after benchmarks.

A revision's code is exported from git into a scratch folder (``git archive``: the
repository's branches, index and worktrees stay untouched), or is the working tree itself.
Each side runs in a process of its own with its code first on ``PYTHONPATH``, and is driven
only through what stays put as the code moves: the ``retriever`` command (through the
console-script entry that revision's own ``pyproject.toml`` names) and the worker mode of a
benchmark script, which calls public names only (``retriever.Searcher``, ``retriever.Encoder``
and their public methods).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Code:
    """One side of a comparison: ``before`` or ``after``, and the folder of its code."""

    side: str
    path: Path
    revision: str | None  # the full commit; None for the working tree

    @property
    def label(self) -> str:
        if self.revision is None:
            return f"working tree of {git('rev-parse', 'HEAD')[:12]}"
        return f"git {self.revision[:12]}"


WORKING_TREE = Code("this checkout", ROOT, None)


@dataclass(frozen=True)
class Measured:
    """A finished child process: wall seconds and peak RSS (the kernel's ru_maxrss)."""

    seconds: float
    peak_rss_mib: float


def git(*argv: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), *argv], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout.strip()


def add_revision_options(parser: argparse.ArgumentParser, *, before: str | None = None) -> None:
    """``--before REV`` (required unless given a default) and ``--after REV``."""
    parser.add_argument(
        "--before",
        required=before is None,
        default=before,
        metavar="REV",
        help="git revision of the old code"
        + (f" (default: {before[:12]})" if before else " (required)"),
    )
    parser.add_argument(
        "--after",
        default=None,
        metavar="REV",
        help="git revision of the new code (default: this working tree, uncommitted "
        "changes included)",
    )


def code_trees(before: str, after: str | None, scratch: Path) -> list[Code]:
    """The before and after code, exported under ``scratch`` where a revision is named."""
    return [code_at("before", before, scratch), code_at("after", after, scratch)]


def code_at(side: str, revision: str | None, scratch: Path) -> Code:
    """``revision``'s code (exported under ``scratch``), or the working tree for None."""
    if revision is None:
        return Code(side, ROOT, None)
    commit = git("rev-parse", "--verify", f"{revision}^{{commit}}")
    folder = scratch / f"code-{side}"
    folder.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit], stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(folder)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"git archive {commit} failed")
    return Code(side, folder, commit)


def child_env(code: Code, **extra: str) -> dict[str, str]:
    """This process's environment with ``code`` first on the path."""
    return {**os.environ, **extra, "PYTHONPATH": str(code.path)}


def cli_entry(code: Code) -> tuple[str, str]:
    """The (module, function) of the ``retriever`` console script that ``code`` declares."""
    pyproject = (code.path / "pyproject.toml").read_text()
    found = re.search(r'^retriever\s*=\s*"([\w.]+):(\w+)"', pyproject, re.MULTILINE)
    if found is None:
        raise SystemExit(f"{code.label} declares no `retriever` script in pyproject.toml")
    return found[1], found[2]


def cli_argv(code: Code, argv: list[str]) -> list[str]:
    """``retriever ARGV`` run by ``code``: its console-script entry called as the installed
    script calls it, without the working folder on the path (so that nothing shadows
    ``code``); it refuses to run another copy of the package."""
    module, function = cli_entry(code)
    program = (
        "import sys\n"
        "sys.path.pop(0)  # the working folder\n"
        "import pathlib, retriever\n"
        f"expected = pathlib.Path({str(code.path)!r}).resolve()\n"
        "found = pathlib.Path(retriever.__file__).resolve().parents[1]\n"
        "if found != expected: sys.exit(f'imported retriever from {found}, not {expected}')\n"
        f"from {module} import {function}\n"
        "sys.argv[0] = 'retriever'\n"
        f"sys.exit({function}())\n"
    )
    return [sys.executable, "-c", program, *argv]


def run_measured(argv: list[str], *, env: dict[str, str], cwd: Path, what: str) -> Measured:
    """Run ``argv`` to its end, its output passing through: wall time and peak RSS."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, cwd=cwd, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{what} failed (its messages are above)")
    return Measured(seconds, usage.ru_maxrss / 1024)


def own_cache(code: Code, scratch: Path) -> dict[str, str]:
    """The environment that gives ``code``'s side a cache of its own under ``scratch``
    (converted models, embedding stores): the index it builds and the searches of that
    index then read the same one."""
    return {"RETRIEVER_CACHE": str(scratch / f"cache-{code.side}")}


def run_cli(code: Code, argv: list[str], *, cwd: Path, **env: str) -> Measured:
    """``retriever ARGV`` with the code of ``code``, measured."""
    return run_measured(
        cli_argv(code, argv),
        env=child_env(code, **env),
        cwd=cwd,
        what=f"`retriever {' '.join(argv)}` ({code.side}, {code.label})",
    )


def cli_words(code: Code, command: str) -> frozenset[str]:
    """The words of ``retriever COMMAND --help`` of ``code``: a flag it has is among them
    (one process per call, so ask once for every flag of a command)."""
    result = subprocess.run(
        cli_argv(code, [command, "--help"]), env=child_env(code), capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"`retriever {command} --help` ({code.label}) failed: {result.stderr}")
    return frozenset(result.stdout.split())


def run_worker(script: str, code: Code, job: dict[str, Any], scratch: Path, **env: str) -> Any:
    """The worker mode of benchmark ``script`` (``--worker JOB``) with the code of ``code``:
    it reads ``job`` and writes ``{"code": folder, "result": ...}`` to ``job["output"]``;
    returns the result, once checked that the worker imported ``code``."""
    output = scratch / "worker-output.json"
    job_file = scratch / "worker-job.json"
    job_file.write_text(json.dumps({**job, "output": str(output)}))
    # cwd outside the repository: sys.path must not hold another copy of the package.
    status = subprocess.run(
        [sys.executable, str(Path(script).resolve()), "--worker", str(job_file)],
        cwd=scratch,
        env=child_env(code, **env),
    ).returncode
    if status != 0:
        raise SystemExit(f"the {code.side} worker ({code.label}) failed: its messages are above")
    reply = json.loads(output.read_text())
    check_imported(reply["code"], code)
    return reply["result"]


def check_imported(found: str, code: Code) -> None:
    if Path(found).resolve() != code.path.resolve():
        raise SystemExit(f"the {code.side} worker imported retriever from {found}, not {code.path}")


def worker_reply(job: dict[str, Any], result: Any) -> None:
    """Inside a worker: ``result`` to the job's output, with the code it ran."""
    import retriever

    code = str(Path(retriever.__file__).resolve().parents[1])
    Path(job["output"]).write_text(json.dumps({"code": code, "result": result}))


def worker_job() -> Path | None:
    """The job file, when this process is a worker (``SCRIPT --worker JOB``), else None:
    checked before the script parses its own options, none of which a worker is given."""
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        return Path(sys.argv[2])
    return None
