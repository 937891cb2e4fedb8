"""Profile what one /billing answer costs behind the ack, in one thread (pyinstrument).

``billing-bot serve`` does this work in pool threads, out of reach of a sampling profiler
watching the main thread; here the same ``Handlers.command`` calls (database, rating, Block
Kit) run in a loop in the main thread, for admins of random organizations.

    python -m bench.profile_handlers --out FILE --teams TEAMS.json [--per-command N]
    (DATABASE_URL from the environment)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from pyinstrument import Profiler

from billing_core.db.engine import Database
from billing_core.services import BillingService
from bot.handlers import Asker, Handlers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--teams", type=Path, required=True, help="JSON: [[team, admin, [numbers]]]"
    )
    parser.add_argument("--per-command", type=int, default=50)
    args = parser.parse_args()
    teams = json.loads(args.teams.read_text(encoding="utf-8"))
    service = BillingService(Database(os.environ["DATABASE_URL"]))
    handlers = Handlers(service)
    rng = random.Random(3)
    timings: dict[str, float] = {}
    profiler = Profiler()
    profiler.start()
    for command in ("balance", "owed", "invoices", "invoice N"):
        started = time.perf_counter()
        for _ in range(args.per_command):
            team, admin, numbers = rng.choice(teams)
            text = f"invoice {rng.choice(numbers)}" if command == "invoice N" else command
            if command == "invoice N" and not numbers:
                text = "invoices"
            reply = handlers.command(Asker(team, admin), text).reply.message()
            if "went wrong" in json.dumps(reply):
                raise SystemExit(f"{text!r} for {team} failed: {reply}")
        timings[command] = (time.perf_counter() - started) / args.per_command
    profiler.stop()
    summary = ", ".join(f"{c} {t * 1000:.1f} ms" for c, t in timings.items())
    args.out.write_text(
        f"mean time per answer, one thread: {summary}\n\n" + profiler.output_text(),
        encoding="utf-8",
    )
    print(summary)
    service.db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
