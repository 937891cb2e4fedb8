"""Benchmark 3: /billing balance, owed, invoices and invoice N over HTTP, 8 clients at once.

``billing-bot serve --no-scheduler`` runs as a process of its own on the database with the
period's events imported (mid-period: ``balance`` rates them with the server's real clock),
with the Slack Web API emulator (users.info, auth.test) in a third process. Eight client
threads each send signed slash commands one after the other, from the admins of random
organizations. Two times are taken per request:

* ack: from sending the request to Slack's HTTP answer (what Slack waits for);
* answer: from sending the request to the bot's answer arriving at response_url (what the
  person who typed the command waits for). The targets are judged on this one.

After each 8-client load, one client alone sends the same command 60 times: its p50 is the
cost of one answer without queueing behind the other seven (an information row).

The floor: a Bolt app whose handler only acks (bench/ackonly.py), served the same way, same
clients, same signatures.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from typing import Any

from bench.build import World, serve_argv
from bench.memory import PYTHON, ROOT
from bench.report import Row, median, ms, percentile, times
from bench.slack import Client, Receiver, Timing, cpu_seconds, free_port, server

COMMANDS = ("balance", "owed", "invoices", "invoice N")
CLIENTS = 8
REQUESTS = 400  # per command per run
WARMUP = 5  # per client per command, not measured
SINGLE = 60  # requests of one lone client per command per run: the service time, no queueing
TARGET_P50, TARGET_P99, TARGET_RATIO = 0.010, 0.050, 3.0

Ask = tuple[str, str, str]  # team, user, text


def _asks(world: World, ready: str, command: str, count: int, seed: int) -> list[Ask]:
    numbers: dict[str, list[str]] = defaultdict(list)
    if command == "invoice N":
        for team, number in world.cluster.rows(
            ready,
            "SELECT o.slack_team_id, i.number FROM invoices i "
            "JOIN organizations o ON o.id = i.organization_id",
        ):
            numbers[team].append(number)
    rng = random.Random(seed)
    asks: list[Ask] = []
    while len(asks) < count:
        team, admin = rng.choice(world.teams)
        if command == "invoice N":
            if not numbers[team]:
                continue
            asks.append((team, admin, f"invoice {rng.choice(numbers[team])}"))
        else:
            asks.append((team, admin, command))
    return asks


def _load(
    port: int, receiver: Receiver | None, asks: list[Ask], clients: int = CLIENTS
) -> list[Timing]:
    """Send ``asks`` from ``clients`` threads, each one request after the other."""
    results: list[list[Timing]] = [[] for _ in range(clients)]

    def client(index: int) -> None:
        c = Client(port, receiver)
        try:
            for team, user, text in asks[index::clients]:
                results[index].append(c.command(team, user, text, wait_answer=receiver is not None))
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [timing for part in results for timing in part]


def run(world: World, ready: str, runs: int) -> list[Row]:
    world.emulator.ask("users", ids=sorted({admin for _, admin in world.teams}))
    requests, warmup = (2 * CLIENTS, 1) if world.smoke else (REQUESTS, WARMUP)
    single = 4 if world.smoke else SINGLE
    asks = {c: _asks(world, ready, c, requests, seed=i) for i, c in enumerate(COMMANDS)}
    warm = {
        c: _asks(world, ready, c, warmup * CLIENTS, seed=100 + i) for i, c in enumerate(COMMANDS)
    }
    stats: dict[str, dict[str, list[float]]] = {
        c: defaultdict(list) for c in (*COMMANDS, "ack-only")
    }
    errors: dict[str, int] = defaultdict(int)
    receiver = Receiver()
    try:
        for r in range(runs):
            port = free_port()
            log = world.work / "serve-http.log"
            with server(serve_argv(port), env=world.slack_env(ready), port=port, log=log) as proc:
                for command in COMMANDS:
                    _load(port, receiver, warm[command])
                    spent = cpu_seconds(proc.pid)
                    timings = _load(port, receiver, asks[command])
                    spent = cpu_seconds(proc.pid) - spent
                    stats[command]["cpu_ms"].append(spent * 1000 / len(timings))
                    _note(stats[command], errors, command, timings)
                    alone = _load(port, receiver, asks[command][:single], clients=1)
                    stats[command]["single_p50"].append(percentile(_answers(alone), 50))
                    world.log(
                        f"  run {r + 1} {command}: answer p50 "
                        f"{ms(percentile(_answers(timings), 50))}, p99 "
                        f"{ms(percentile(_answers(timings), 99))}; ack p50 "
                        f"{ms(percentile([t.ack for t in timings], 50))}"
                    )
            port = free_port()
            argv = [str(PYTHON), "-m", "bench.ackonly", "--port", str(port)]
            env = world.slack_env(ready)
            env["PYTHONPATH"] = str(ROOT)
            with server(argv, env=env, port=port, log=world.work / "ackonly.log") as proc:
                _load(port, None, warm["balance"])
                spent = cpu_seconds(proc.pid)
                timings = _load(port, None, asks["balance"])
                spent = cpu_seconds(proc.pid) - spent
                stats["ack-only"]["cpu_ms"].append(spent * 1000 / len(timings))
                _note(stats["ack-only"], errors, "ack-only", timings)
                world.log(
                    f"  run {r + 1} ack-only: p50 {ms(percentile([t.ack for t in timings], 50))}, "
                    f"p99 {ms(percentile([t.ack for t in timings], 99))}"
                )
    finally:
        receiver.close()
    return _rows(stats, errors, runs, requests)


def _answers(timings: list[Timing]) -> list[float]:
    return [t.answer for t in timings if t.answer is not None]


def _note(
    into: dict[str, list[float]], errors: dict[str, int], name: str, timings: list[Timing]
) -> None:
    answered = _answers(timings) if name != "ack-only" else [t.ack for t in timings]
    acks = [t.ack for t in timings]
    into["p50"].append(percentile(answered, 50))
    into["p99"].append(percentile(answered, 99))
    into["ack_p50"].append(percentile(acks, 50))
    into["ack_p99"].append(percentile(acks, 99))
    errors[name] += sum(1 for t in timings if not t.ok)


def _rows(
    stats: dict[str, dict[str, list[float]]], errors: dict[str, int], runs: int, requests: int
) -> list[Row]:
    floor50 = median(stats["ack-only"]["p50"])
    floor99 = median(stats["ack-only"]["p99"])
    rows: list[Row] = []
    for command in COMMANDS:
        s = stats[command]
        p50, p99 = median(s["p50"]), median(s["p99"])
        bad = errors[command]
        note = f"{runs} runs x {requests} requests, {CLIENTS} clients"
        if bad:
            note += f"; {bad} requests refused, apologised or unanswered"
        raw: dict[str, Any] = {k: list(v) for k, v in s.items()}
        rows.append(
            Row(
                key=f"3 {command} p50",
                figure=ms(p50),
                target=f"<= {ms(TARGET_P50)}, <= {TARGET_RATIO:g}x ack-only",
                floor=f"ack-only p50 {ms(floor50)}",
                ratio=times(p50 / floor50),
                ok=p50 <= TARGET_P50 and p50 / floor50 <= TARGET_RATIO and not bad,
                note=note,
                raw=raw,
            )
        )
        rows.append(
            Row(
                key=f"3 {command} p99",
                figure=ms(p99),
                target=f"<= {ms(TARGET_P99)}",
                floor=f"ack-only p99 {ms(floor99)}",
                ratio=times(p99 / floor99),
                ok=p99 <= TARGET_P99 and not bad,
            )
        )
    alone = ", ".join(f"{c} {ms(median(stats[c]['single_p50']))}" for c in COMMANDS)
    rows.append(
        Row(
            key="3 one client alone p50",
            figure=alone,
            target="(information)",
            floor=f"ack-only p50 {ms(floor50)}",
            ratio="-",
            ok=None,
            note=(
                "the same commands from a single client: what one answer costs without "
                "waiting behind the 7 others"
            ),
        )
    )
    floor_cpu = median(stats["ack-only"]["cpu_ms"])
    rows.append(
        Row(
            key="3 server CPU per request",
            figure=", ".join(f"{c} {median(stats[c]['cpu_ms']):.2f} ms" for c in COMMANDS),
            target="(information)",
            floor=f"ack-only {floor_cpu:.2f} ms",
            ratio=", ".join(times(median(stats[c]["cpu_ms"]) / floor_cpu) for c in COMMANDS),
            ok=None,
            note=(
                "user+system CPU of the server process over each 8-client load, per request: "
                "with 8 clients on 2 cores the answers queue for this, so p50 follows it"
            ),
        )
    )
    acks50 = median([v for c in COMMANDS for v in stats[c]["ack_p50"]])
    acks99 = median([v for c in COMMANDS for v in stats[c]["ack_p99"]])
    rows.append(
        Row(
            key="3 serve HTTP ack p50/p99",
            figure=f"{ms(acks50)} / {ms(acks99)}",
            target="(information)",
            floor=f"ack-only {ms(floor50)} / {ms(floor99)}",
            ratio=times(acks50 / floor50),
            ok=None,
            note="what Slack itself waits for; the answer rows above are what the user waits for",
        )
    )
    return rows
