"""Slack-facing commands of ``billing-bot`` (serve, socket, console)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the Slack-facing subcommands to the ``billing-bot`` parser."""
