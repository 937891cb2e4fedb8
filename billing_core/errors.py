"""One error tree for every refusal a user or operator can see.

BillingError                 a refusal with a message that is safe to show
├── NotFound                 an organization, group, project, invoice or code does not exist
├── NotAllowed               the actor may not do this (not a member, not an admin)
├── InvalidInput             a value is malformed; ``path`` names it ("organizations[0].key")
├── CouponRefused            the coupon exists but cannot be redeemed by this group now
├── Conflict                 the state changed under the request (stale confirmation, race)
└── CurrencyMismatch         two amounts in different currencies were combined
"""

from __future__ import annotations


class BillingError(Exception):
    """A refusal whose message can be shown to the person who asked."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} {self.hint}"


class NotFound(BillingError):
    """The named thing does not exist (or is not visible to the asker)."""


class NotAllowed(BillingError):
    """The actor lacks the role this needs."""


class InvalidInput(BillingError):
    """A value in a file, a request or a command is malformed."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, hint=hint)
        self.path = path
        self.reason = message


class CouponRefused(BillingError):
    """The coupon exists but cannot be redeemed here and now."""


class Conflict(BillingError):
    """The state changed between asking and confirming."""


class CurrencyMismatch(BillingError):
    """Two amounts in different currencies met."""
