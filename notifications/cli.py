"""Notification commands of ``billing-bot`` (remind)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the notification subcommands to the ``billing-bot`` parser."""
