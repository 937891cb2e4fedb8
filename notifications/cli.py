"""Notification commands of ``billing-bot`` (remind)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from billing_core.db.engine import Database
from billing_core.periods import parse_timestamp
from billing_core.services import BillingService
from billing_core.settings import Settings

if TYPE_CHECKING:
    from notifications.jobs import RemindReport


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the notification subcommands to the ``billing-bot`` parser."""
    help_ = "send the invoice notices and payment reminders due at T"
    parser = sub.add_parser("remind", help=help_, description=help_)
    parser.add_argument("--at", help="ISO 8601 time with offset (default: now)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be sent and to whom; send and record nothing",
    )
    parser.set_defaults(func=cmd_remind)


def cmd_remind(settings: Settings, args: argparse.Namespace) -> int:
    # Imported here: every other command (the console's start, for one) would pay for the
    # Slack client and the Block Kit views it pulls in.
    from notifications.jobs import remind  # noqa: PLC0415

    now = parse_timestamp(args.at, path="--at") if args.at else datetime.now(UTC)
    service = BillingService(
        Database(settings.database_url), invoice_prefix=settings.invoice_prefix
    )
    try:
        report = remind(service, settings, now, dry_run=args.dry_run)
    finally:
        service.db.dispose()
    if args.dry_run:
        print_dry_run(report)
        return 0
    for settled in report.sent:
        print(f"sent {settled.key}" + (f" ({settled.detail})" if settled.detail else ""))
    for settled in report.skipped:
        print(f"skipped {settled.key}: {settled.detail}")
    for settled in report.retrying:
        print(f"will retry {settled.key}: {settled.detail}")
    for settled in report.failed:
        print(f"gave up {settled.key}: {settled.detail}")
    print(report.describe())
    if report.failed:
        print(
            f"billing-bot: {len(report.failed)} messages could not be delivered "
            "(reported to the audit log)",
            file=sys.stderr,
        )
        return 1
    return 0


def print_dry_run(report: RemindReport) -> None:
    """Every message a real run would send, to whom and in which locale, with its text."""
    for preview in report.previews:
        kind, _, ident = preview.recipient.partition(":")
        check = " (after checking it was not sent already)" if preview.in_doubt else ""
        print(f"would send {preview.key} to {kind} {ident} in {preview.locale}{check}:")
        print(f"    {preview.text}")
    for settled in report.skipped:
        print(f"would skip {settled.key}: {settled.detail}")
    print(
        f"dry run: {len(report.previews)} messages would be sent, "
        f"{len(report.skipped)} steps skipped; nothing was sent or recorded"
    )
