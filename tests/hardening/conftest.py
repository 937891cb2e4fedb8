"""Fixtures for the hardening tests: the Slack ones, a second organization, database snapshots.

Every test here that uses ``service`` ends with ``billing-bot check`` (the storage tests' audit
fixture, imported below): whatever a scenario did to the database, no invariant may break.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from billing_core.db import tables as t
from billing_core.services import BillingService
from tests import factories
from tests.db.conftest import audit_after_each_test  # noqa: F401 - autouse: check() after each
from tests.db.test_concurrency import BILLING_BOT, SETTINGS_VARIABLES, TIMEOUT, Run
from tests.slack.conftest import billed, clock, emulator, settings, slack  # noqa: F401

GX_TEAM = "T0GLOBEX"
GX_ADMIN = "U0GXADMIN"
# Strings only Acme's data holds: none may reach someone who may not read Acme's billing.
ACME_DATA = (
    "INV-2026-",
    "1,469",
    "1.469",
    "Engineering",
    "Operations & Support",
    "Tokyo",
    "U0FIN",
    "C0BILLING",
    "pay-1",
)

Snapshot = dict[str, list[tuple[Any, ...]]]


def globex_document() -> dict[str, Any]:
    """Another organization whose group and project keys collide with Acme's (eng, ops, web)."""
    doc = factories.document(
        coupons=[
            {"code": "SPRING5", "percent_off": "5", "duration": "once"},
            {"code": "MENTION5", "percent_off": "5", "duration": "once"},
        ]
    )
    org = factories.org(doc)
    org.update(
        key="globex",
        name="Globex Corp",
        slack_team_id=GX_TEAM,
        members=[{"slack_user_id": GX_ADMIN, "role": "admin"}],
    )
    group = org["billing_groups"][0]
    group.update(name="Gx Eng", contacts=[{"slack_user_id": "U0GXFIN"}])
    org["billing_groups"].append({**group, "key": "ops", "name": "Gx Ops"})
    org["projects"] = [{"key": "web", "name": "Gx Web", "billing_group": "eng"}]
    return doc


def add_globex(service: BillingService) -> None:
    service.load(globex_document(), at=datetime(2026, 1, 1, tzinfo=UTC))


def snapshot(service: BillingService) -> Snapshot:
    """Every row of every billing table, ordered by primary key.

    ``seen_slack_requests`` is left out: it is the request door's memory (bot.replay), not
    billing state, and every accepted Slack request adds its signature there (its rules are
    pinned by test_replay_guard.py and the replay tests of test_hostile_slack.py).
    """
    result: Snapshot = {}
    with service.db.engine.connect() as conn:
        for table in t.Base.metadata.sorted_tables:
            if table.name == t.SeenSlackRequest.__tablename__:
                continue
            order = list(table.primary_key.columns) or list(table.columns)
            rows = conn.execute(sa.select(table).order_by(*order)).all()
            result[table.name] = [tuple(row) for row in rows]
    return result


def changed_tables(before: Snapshot, after: Snapshot) -> set[str]:
    return {name for name in before if before[name] != after.get(name)}


@contextmanager
def row_locked(engine: sa.Engine, sql: str, **params: Any) -> Iterator[None]:
    """Hold the row lock ``sql`` (a SELECT ... FOR ...) takes until the block ends."""
    with engine.connect() as conn, conn.begin():
        assert conn.execute(sa.text(sql), params).all(), "the row to lock exists"
        yield


@pytest.fixture
def start_cli(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Start ``billing-bot ARGS...`` on a database as a subprocess; killed if left running.

    ``env`` adds variables (tokens, the emulator's URL); the caller's settings never leak in.
    """
    assert BILLING_BOT.is_file(), f"the console script is not installed at {BILLING_BOT}"
    runs: list[Run] = []

    def start(url: str, *args: str, env: dict[str, str] | None = None) -> Run:
        environ = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARIABLES}
        environ.update(DATABASE_URL=url, **(env or {}))
        index = len(runs)
        out = (tmp_path / f"cli{index}.out").open("w+b")
        err = (tmp_path / f"cli{index}.err").open("w+b")
        process = subprocess.Popen(
            [str(BILLING_BOT), *args], cwd=tmp_path, env=environ, stdout=out, stderr=err
        )
        runs.append(Run(process, out, err))
        return runs[-1]

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
        run.process.wait(timeout=TIMEOUT)
        run.out.close()
        run.err.close()


class Forked:
    """One ``billing-bot`` command forked by the zygote."""

    def __init__(self, zygote: Zygote, pid: int, out: Path, err: Path) -> None:
        self.zygote, self.pid, self.out, self.err = zygote, pid, out, err
        self.code: int | None = None

    def poll(self) -> int | None:
        """The exit code once the command has ended, else None (without waiting)."""
        if self.code is None:
            self.code = self.zygote.exit_code(self.pid, timeout=0)
        return self.code

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)

    def finish(self, timeout: float = TIMEOUT) -> tuple[int, str, str]:
        if self.code is None:
            self.code = self.zygote.exit_code(self.pid, timeout=timeout)
        assert self.code is not None, f"billing-bot (pid {self.pid}) still runs after {timeout}s"
        return self.code, _text(self.out), _text(self.err)


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


class Zygote:
    """tests/hardening/zygote.py: ``billing-bot`` with its imports paid once (one at a time)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.buffer = b""
        self.current: Forked | None = None
        environ = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARIABLES}
        self.base_env = environ
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("zygote.py"))],
            cwd=workdir,
            env=environ,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def start(
        self, url: str, *argv: str, env: dict[str, str] | None = None, stdin: str = ""
    ) -> Forked:
        """Fork ``billing-bot ARGV`` on the database ``url``; ``stdin`` is its input."""
        self.count += 1
        paths = {k: self.workdir / f"z{self.count}.{k}" for k in ("stdin", "stdout", "stderr")}
        paths["stdin"].write_text(stdin, encoding="utf-8")
        request = {
            "argv": list(argv),
            "env": {**self.base_env, "DATABASE_URL": url, **(env or {})},
            "cwd": str(self.workdir),
            **{k: str(p) for k, p in paths.items()},
        }
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        word, pid = self._line(TIMEOUT).split()
        assert word == "started", word
        self.current = Forked(self, int(pid), paths["stdout"], paths["stderr"])
        return self.current

    def run(self, url: str, *argv: str, **kwargs: Any) -> tuple[int, str, str]:
        return self.start(url, *argv, **kwargs).finish()

    def exit_code(self, pid: int, *, timeout: float) -> int | None:
        line = self._line(timeout)
        if line is None:
            return None
        word, ended, code = line.split()
        assert (word, int(ended)) == ("exited", pid), line
        return int(code)

    def _line(self, timeout: float) -> Any:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(remaining, 0))
            if not ready:
                return None
            chunk = os.read(fd, 4096)
            assert chunk, "the zygote died"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def close(self) -> None:
        if self.current is not None and self.current.poll() is None:
            self.current.kill()
            self.current.finish()
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=TIMEOUT)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture(scope="session")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    forks = Zygote(tmp_path_factory.mktemp("zygote"))
    try:
        yield forks
    finally:
        forks.close()
