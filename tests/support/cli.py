"""Helpers for tests of the ``obsbus`` command: in-process runs, the real console script.

``Cli`` runs ``services.cli.main.main(argv)`` in the test process and captures what it
printed; ``run_script`` runs the installed console script in a subprocess. Both return a
``Result`` whose ``rows()`` parses ``--json`` output and whose ``error()`` checks the one-line
error contract (exit status 1, one ``obsbus: error:`` line on stderr, no traceback).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.cli.main import main
from services.instruments import DetectorDef
from tests.support.dummycam import DummyCam

ERROR_PREFIX = "obsbus: error: "


@dataclass(frozen=True)
class Result:
    """One run of ``obsbus``: its arguments, exit status and captured output."""

    argv: tuple[str, ...]
    code: int
    out: str
    err: str

    def describe(self) -> str:
        return (
            f"obsbus {' '.join(self.argv)}\n-> exit {self.code}\n"
            f"stdout:\n{self.out}\nstderr:\n{self.err}"
        )

    def json(self) -> Any:
        try:
            return json.loads(self.out)
        except json.JSONDecodeError as err:
            raise AssertionError(f"stdout is not JSON ({err})\n{self.describe()}") from None

    def rows(self) -> list[dict[str, Any]]:
        """``--json`` output: a JSON array of flat objects (no nested arrays or objects)."""
        data = self.json()
        assert isinstance(data, list), self.describe()
        for row in data:
            assert isinstance(row, dict), self.describe()
            nested = {k: v for k, v in row.items() if isinstance(v, dict | list)}
            assert not nested, f"row is not flat: {nested}\n{self.describe()}"
        return data

    def error(self) -> str:
        """Check the error contract and return the message after ``obsbus: error: ``."""
        assert self.code == 1, self.describe()
        assert "Traceback" not in self.err, self.describe()
        lines = self.err.splitlines()
        assert len(lines) == 1, f"expected exactly one stderr line\n{self.describe()}"
        assert lines[0].startswith(ERROR_PREFIX), self.describe()
        return lines[0][len(ERROR_PREFIX) :]


class Cli:
    """Runs ``obsbus`` in-process; ``cli(...)`` also asserts success."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def run(self, *args: object) -> Result:
        argv = tuple(str(a) for a in args)
        self._capsys.readouterr()  # drop anything printed before this command
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = self._capsys.readouterr()
        return Result(argv, code, out, err)

    def __call__(self, *args: object) -> Result:
        result = self.run(*args)
        assert result.code == 0, result.describe()
        return result

    def fails(self, *args: object) -> str:
        """Run a command that must fail cleanly; return its one-line error message."""
        return self.run(*args).error()


def db_args(db_settings: Mapping[str, str | None]) -> list[str]:
    """``create`` options for the ``db_settings`` fixture (none for SQLite)."""
    args: list[str] = []
    if db_settings["db"]:
        args += ["--db", db_settings["db"]]
    if db_settings["db_namespace"]:
        args += ["--db-namespace", db_settings["db_namespace"]]
    return args


def obsbus_script() -> str:
    """The installed console script: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "obsbus"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("obsbus")
    if found is None:
        pytest.fail("the obsbus console script is not installed (pip install -e .)")
    return found


def start_script(
    args: Sequence[object], env: Mapping[str, str], cwd: Path
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [obsbus_script(), *(str(a) for a in args)],
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_script(proc: subprocess.Popen[str], args: Sequence[object]) -> Result:
    out, err = proc.communicate(timeout=120)
    return Result(tuple(str(a) for a in args), proc.returncode, out, err)


def run_script(args: Sequence[object], env: Mapping[str, str], cwd: Path) -> Result:
    return finish_script(start_script(args, env, cwd), args)


class DummyCamRepurposed(DummyCam):
    """DummyCam with detector 3 turned from a guider into a focus sensor (a changed definition)."""

    detectors = tuple(
        DetectorDef(d.id, d.full_name, d.serial, "focus" if d.id == 3 else d.purpose)
        for d in DummyCam.detectors
    )
