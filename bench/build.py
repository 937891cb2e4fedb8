"""Build the dataset in PostgreSQL the way a user would: only through ``billing-bot``.

* organizations, groups and projects: ``billing-bot load``, the catalogue first, then the
  organizations in chunks;
* 12 months of issued invoices: each month's usage through ``billing-bot usage import``, then
  ``billing-bot run-billing --at`` the 1st of the next month;
* payments for most of that history: ``billing-bot payments import`` (some invoices stay open,
  some overdue, so ``/billing owed`` has something to say);
* coupons: admins redeem them with ``/billing redeem CODE GROUP``, signed Slack requests to
  ``billing-bot serve`` (the only way a user redeems one);
* the current period's events are written to a file here; importing them is benchmark 1.

The result is the database ``base``, the template every benchmark run clones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from bench import dataset as ds
from bench.emulator_proc import Emulator
from bench.memory import BILLING_BOT, billing_bot, product_env
from bench.pg import Cluster
from bench.slack import SECRET, Client, Receiver, free_port, server

LOAD_CHUNK = 100  # organizations per ``billing-bot load``


@dataclass
class World:
    cluster: Cluster
    scale: float
    work: Path
    emulator: Emulator
    log: Callable[[str], None]
    smoke: bool = False  # CI: 1 history month, few requests and notices; figures mean nothing
    sizes: ds.Sizes = field(init=False)
    calendar: ds.Calendar = field(init=False)
    base: str = ""
    fanout_db: str = ""  # the fan-out's template, once benchmark 4 built it
    events_file: Path = field(init=False)
    teams: list[tuple[str, str]] = field(default_factory=list)  # (team, admin) per org
    build_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def history_months(self) -> int:
        return 1 if self.smoke else ds.HISTORY_MONTHS

    def __post_init__(self) -> None:
        from datetime import UTC, datetime  # noqa: PLC0415

        self.sizes = ds.Sizes.at(self.scale)
        self.calendar = ds.Calendar.around(datetime.now(UTC))
        self.events_file = self.work / "events.jsonl"

    def env(self, db: str, **extra: str) -> dict[str, str]:
        return product_env(self.cluster.url(db), **extra)

    def slack_env(self, db: str) -> dict[str, str]:
        return self.env(
            db,
            SLACK_BOT_TOKEN=self.emulator.token,
            SLACK_SIGNING_SECRET=SECRET,
            SLACK_API_URL=self.emulator.api_url,
        )


def serve_argv(port: int) -> list[str]:
    return [str(BILLING_BOT), "serve", "--no-scheduler", "--port", str(port)]


def build(world: World) -> None:
    """Create and fill ``base``; write the current period's events file."""
    w, cal, sizes = world, world.calendar, world.sizes
    w.log(
        f"dataset at scale {w.scale}: {sizes.organizations} organizations, {sizes.groups} groups, "
        f"{sizes.projects} projects, {sizes.history_events} history events, "
        f"{sizes.events} events in {cal.billed_start:%Y-%m}"
    )
    w.base = w.cluster.create("base")
    env = w.env(w.base)
    billing_bot("db", "upgrade", env=env).check()

    started = time.perf_counter()
    document = ds.load_document(sizes, cal)
    w.teams = [
        (o["slack_team_id"], o["members"][0]["slack_user_id"]) for o in document["organizations"]
    ]
    for number, part in enumerate(ds.chunks(document, LOAD_CHUNK)):
        path = w.work / f"load-{number:04d}.json"
        path.write_text(json.dumps(part), encoding="utf-8")
        billing_bot("load", str(path), env=env).check()
        path.unlink()
    w.build_seconds["load"] = time.perf_counter() - started
    w.log(f"  loaded in {w.build_seconds['load']:.1f} s")

    started = time.perf_counter()
    projects = ds.projects_of(document)
    per_month = max(1, sizes.history_events // ds.HISTORY_MONTHS)
    issued = 0
    first = ds.HISTORY_MONTHS - w.history_months
    for month in range(first, ds.HISTORY_MONTHS):
        start, end = cal.month(month)
        path = w.work / f"history-{month:02d}.jsonl"
        ds.write_events(path, projects, per_month, start, end, prefix=f"h{month}", seed=month)
        billing_bot("usage", "import", str(path), env=env).check()
        path.unlink()
        run = billing_bot("run-billing", "--at", cal.run_at(end).isoformat(), env=env).check()
        issued += _issued(run.stdout)
        w.log(f"    {start:%Y-%m}: imported and billed ({issued} invoices so far)")
    w.build_seconds["history"] = time.perf_counter() - started
    w.log(
        f"  {w.history_months} months of history: {issued} invoices "
        f"in {w.build_seconds['history']:.1f} s"
    )

    started = time.perf_counter()
    paid = _pay_history(world)
    w.build_seconds["payments"] = time.perf_counter() - started
    w.log(f"  {paid} payments imported in {w.build_seconds['payments']:.1f} s")

    started = time.perf_counter()
    redeemed = _redeem_coupons(world)
    w.build_seconds["coupons"] = time.perf_counter() - started
    w.log(f"  {redeemed} coupons redeemed over Slack in {w.build_seconds['coupons']:.1f} s")

    started = time.perf_counter()
    ds.write_events(
        w.events_file, projects, sizes.events, cal.billed_start, cal.billed_end, prefix="e"
    )
    w.build_seconds["events_file"] = time.perf_counter() - started
    w.log(f"  {sizes.events} current events written in {w.build_seconds['events_file']:.1f} s")


def _issued(stdout: str) -> int:
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    head = last.split(" invoices issued")[0]
    return int(head) if head.isdigit() else 0


def _pay_history(world: World) -> int:
    """Most groups pay everything but the last invoice; every tenth pays nothing of the last
    three months (so it is overdue). One payment per group, allocated oldest first."""
    cal = world.calendar
    last_months = {1: cal.month(ds.HISTORY_MONTHS - 1)[0], 3: cal.month(ds.HISTORY_MONTHS - 3)[0]}
    rows = world.cluster.rows(
        world.base,
        """
        SELECT o.key, g.key, g.id, g.currency, i.period_start, i.amount_due
        FROM invoices i
        JOIN billing_groups g ON g.id = i.billing_group_id
        JOIN organizations o ON o.id = g.organization_id
        WHERE i.status = 'open'
        ORDER BY g.id, i.period_start
        """,
    )
    owed: dict[int, list[object]] = {}
    for org, group, gid, currency, period_start, due in rows:
        unpaid = 3 if gid % 10 == 0 else 1
        # period_start is local midnight; compare a day later to stay clear of zone offsets
        if period_start + timedelta(days=1) >= last_months[unpaid]:
            continue
        entry = owed.setdefault(gid, [f"{org}/{group}", currency, 0])
        entry[2] += due  # type: ignore[operator]
    path = world.work / "payments.jsonl"
    received = (cal.billed_start + timedelta(days=2)).isoformat()
    lines = [
        json.dumps(
            {
                "reference": f"pay-{gid}",
                "billing_group": ref,
                "amount": str(amount),
                "currency": currency,
                "method": "card",
                "received_at": received,
            }
        )
        for gid, (ref, currency, amount) in owed.items()
        if amount > 0  # type: ignore[operator]
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if lines:
        billing_bot("payments", "import", str(path), env=world.env(world.base)).check()
    path.unlink()
    return len(lines)


def coupon_for(group_no: int) -> str | None:
    if group_no % 7 == 3:
        return "TEN"
    if group_no % 11 == 5:
        return "WELCOME"
    return None


def _redeem_coupons(world: World) -> int:
    """``/billing redeem CODE GROUP`` from each organization's admin, over signed HTTP."""
    asks: list[tuple[str, str, str]] = []
    per_org = [
        world.sizes.groups // world.sizes.organizations
        + (o < world.sizes.groups % world.sizes.organizations)
        for o in range(world.sizes.organizations)
    ]
    group_no = 0
    for o, count in enumerate(per_org):
        team, admin = world.teams[o]
        for _ in range(count):
            code = coupon_for(group_no)
            if code:
                asks.append((team, admin, f"redeem {code} g{group_no}"))
            group_no += 1
    if not asks:
        return 0
    world.emulator.ask("users", ids=[admin for _, admin in world.teams])
    port = free_port()
    receiver = Receiver()
    failed = 0
    try:
        with server(
            serve_argv(port),
            env=world.slack_env(world.base),
            port=port,
            log=world.work / "serve-build.log",
        ):

            def send(batch: list[tuple[str, str, str]]) -> int:
                client = Client(port, receiver)
                bad = 0
                try:
                    for team, admin, text in batch:
                        bad += 0 if client.command(team, admin, text).ok else 1
                finally:
                    client.close()
                return bad

            with ThreadPoolExecutor(4) as pool:
                failed = sum(pool.map(send, [asks[i::4] for i in range(4)]))
    finally:
        receiver.close()
    stored = world.cluster.scalar(world.base, "SELECT count(*) FROM coupon_redemptions")
    if failed or stored != len(asks):
        raise RuntimeError(f"{failed} redemptions refused; {stored} of {len(asks)} stored")
    return len(asks)
