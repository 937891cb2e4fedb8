"""Commands and button clicks answered the same way on every surface (Slack or the console).

Each answer is: parse -> who is asking (service.actor) -> one service call -> a view, and for
``usage``, ``export`` and Download PDF also files (rendered here, delivered by the surface). The
one error path lives here too: a BillingError becomes a friendly refusal, anything else is
logged with a reference id and answered with an apology. Callers never see an exception.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from babel import Locale

from billing_core.errors import BillingError, Conflict, InvalidInput, NotAllowed, NotFound
from billing_core.export import to_csv
from billing_core.model import Actor
from billing_core.services import BillingService, Change
from bot import commands as c
from bot import views
from bot.format import parse_locale
from bot.views.admin import CANCEL_ACTION, CONFIRM_ACTION
from bot.views.invoices import PDF_ACTION

log = logging.getLogger("billing_bot.handlers")

Clock = Callable[[], datetime]
Render = Callable[[Locale], "Outcome"]

# Commands that only read: their asker and data are fetched in one transaction.
_READS = (c.Balance, c.Owed, c.Invoices, c.Invoice, c.Payments, c.Credits, c.Groups)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Asker:
    """Who sent a request, as the surface knows them (Slack: from users.info)."""

    team_id: str
    user_id: str
    is_guest: bool = False
    locale: Locale | None = None  # the user's own locale, when the surface knows it


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: views.Reply
    change: Change | None = None  # set when an admin change was made (for the audit channel)
    files: views.Files | None = None  # for the asker; the surface delivers them, then the reply


@dataclass(frozen=True, slots=True)
class AssignAsk:
    """What an assign question asked; carried by its buttons so a click can be checked."""

    project: str
    current: str
    target: str
    user: str
    asked_at: datetime

    def encode(self) -> str:
        return json.dumps(
            {
                "p": self.project,
                "from": self.current,
                "to": self.target,
                "u": self.user,
                "at": self.asked_at.isoformat(),
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, value: str) -> AssignAsk:
        try:
            data = json.loads(value)
            return cls(
                project=str(data["p"]),
                current=str(data["from"]),
                target=str(data["to"]),
                user=str(data["u"]),
                asked_at=datetime.fromisoformat(str(data["at"])),
            )
        except (ValueError, KeyError, TypeError):
            raise InvalidInput(
                "That button does not carry a question I asked; nothing was changed."
            ) from None


class Handlers:
    """The command surface of SPEC 6, independent of how the request arrived."""

    def __init__(
        self,
        service: BillingService,
        *,
        command: str = "/billing",
        payment_url: str | None = None,
        default_locale: str = "en_US",
        clock: Clock | None = None,
        confirm_within: timedelta = timedelta(minutes=15),
        seller_name: str = "billing-bot",
        seller_address: str | None = None,
    ) -> None:
        self.service = service
        self.command_name = command
        self.payment_url = payment_url
        self.seller_name = seller_name
        self.seller_address = seller_address
        self.default_locale = parse_locale(default_locale) or Locale.parse("en_US")
        self.clock = clock or utc_now
        self.confirm_within = confirm_within

    # -- entry points: never raise -------------------------------------------------------

    def command(self, asker: Asker, text: str) -> Outcome:
        """Answer ``/billing <text>``."""
        return self._guarded(asker, text, lambda: self._command(asker, text))

    def button(self, asker: Asker, action_id: str, value: str) -> Outcome:
        """Answer a click on Confirm or Cancel of an assign question, or on Download PDF."""
        return self._guarded(asker, action_id, lambda: self._button(asker, action_id, value))

    def home(self, asker: Asker) -> views.Reply:
        """The App Home tab of ``asker``."""
        return self._guarded(asker, "home", lambda: self._home(asker)).reply

    # -- the one error path --------------------------------------------------------------

    def _guarded(self, asker: Asker, what: str, work: Callable[[], Outcome]) -> Outcome:
        try:
            return work()
        except BillingError as exc:
            return Outcome(views.refusal(exc))
        except Exception:
            reference = uuid.uuid4().hex[:10]
            log.exception(
                "request failed (reference %s, team %s, user %s, request %r)",
                reference,
                asker.team_id,
                asker.user_id,
                what[:200],
            )
            return Outcome(views.apology(reference))

    # -- commands ------------------------------------------------------------------------

    def _command(self, asker: Asker, text: str) -> Outcome:
        command = c.parse(text, command=self.command_name)
        if isinstance(command, c.Help):
            return Outcome(views.help_reply(self.command_name))
        now = self.clock()
        if isinstance(command, _READS):
            # Who is asking and the answer's data in one transaction; the view is built after.
            with self.service.reading():
                actor = self._actor(asker)
                render = self._read(actor, command, now)
            return render(self.locale_for(asker, actor))
        actor = self._actor(asker)
        locale = self.locale_for(asker, actor)
        s = self.service
        match command:
            case c.UsageChart(group=group):
                return self._usage(actor, group, locale, now)
            case c.Export(group=group):
                return self._export(actor, group)
            case c.Redeem(code=code, group=group):
                change = s.redeem_coupon(actor, code=code, group_key=group, at=now)
                return Outcome(views.change_done(change), change)
            case c.Assign(project=project, group=group):
                return self._ask_assign(actor, project, group, now)
        raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover

    def _read(self, actor: Actor, command: c.Command, now: datetime) -> Render:
        """The data of a read command (fetched now), and how to show it in a locale."""
        s = self.service
        match command:
            case c.Balance(group=group):
                balances = s.balance(actor, group_key=group, at=now)
                return lambda locale: Outcome(views.balance_reply(balances, locale))
            case c.Owed(group=group):
                owed = s.owed(actor, group_key=group, at=now)
                return lambda locale: Outcome(views.owed_reply(owed, locale))
            case c.Invoices(group=group):
                invoices = s.invoices(actor, group_key=group)
                return lambda locale: Outcome(views.invoices_reply(invoices, locale))
            case c.Invoice(number=number):
                invoice = s.invoice(actor, number=number)
                url = self.payment_url
                return lambda locale: Outcome(views.invoice_reply(invoice, locale, payment_url=url))
            case c.Payments(group=group):
                payments = s.payments(actor, group_key=group)
                return lambda locale: Outcome(views.payments_reply(payments, locale))
            case c.Credits(group=group):
                credits = s.credits(actor, group_key=group, at=now)
                return lambda locale: Outcome(views.credits_reply(credits, locale))
            case c.Groups():
                groups = s.groups(actor)
                return lambda _: Outcome(views.groups_reply(groups))
        raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover

    def _ask_assign(self, actor: Actor, project: str, group: str, now: datetime) -> Outcome:
        # Refuse a member before asking: a Confirm button they could never use helps nobody.
        self.service.require_admin(actor)
        current = self.service.project_group(actor, project)
        keys = [g.group.key for g in self.service.groups(actor)]
        target = next((k for k in keys if k.casefold() == group.casefold()), None)
        if target is None:
            raise NotFound(
                f"There is no billing group `{group}`.", hint=f"Groups: {', '.join(keys)}."
            )
        if target == current:
            raise InvalidInput(f"Project `{project}` is already in `{current}`; nothing to do.")
        ask = AssignAsk(project, current, target, actor.user_id, now)
        return Outcome(
            views.assign_question(
                project=project, current=current, target=target, value=ask.encode()
            )
        )

    def _usage(self, actor: Actor, group: str | None, locale: Locale, now: datetime) -> Outcome:
        from bot.documents.chart import render_usage_chart  # noqa: PLC0415 - matplotlib/fpdf cost ~2 s at start-up

        dailies = self.service.daily_charges(actor, group_key=group, at=now)
        uploads = tuple(
            views.Upload(
                filename=(
                    f"{actor.organization_key}-{d.group.key}-usage-"
                    f"{d.period.start.date().isoformat()}.png"
                ),
                title=f"{d.group.name} · charges per day",
                content=render_usage_chart(d, locale=locale),
            )
            for d in dailies
        )
        reply = views.usage_reply(dailies, locale)
        if not uploads:
            return Outcome(reply)
        return Outcome(reply, files=views.Files(uploads, views.usage_comment(dailies, locale)))

    def _export(self, actor: Actor, group: str | None) -> Outcome:
        try:
            self.service.require_admin(actor)
        except NotAllowed as refused:
            # The core's words are about changes; an export changes nothing. Same admins.
            raise NotAllowed(
                "Only organization admins can export invoices.", hint=refused.hint
            ) from None
        org = actor.organization_key
        documents = self.service.export_invoices(org_key=org, group_key=group)
        if not documents:
            return Outcome(views.export_reply(documents, None))
        # The group as stored (GROUP is matched without regard to case).
        key = str(documents[0]["billing_group"]) if group else None
        upload = views.Upload(
            filename=f"{org}-{key}-invoices.csv" if key else f"{org}-invoices.csv",
            title=f"Invoices of {org}" + (f", group {key}" if key else ""),
            content=to_csv(documents).encode("utf-8"),
        )
        comment = views.export_comment(org, len(documents))
        return Outcome(views.export_reply(documents, upload), files=views.Files((upload,), comment))

    # -- buttons -------------------------------------------------------------------------

    def _button(self, asker: Asker, action_id: str, value: str) -> Outcome:
        if action_id == PDF_ACTION:
            return self._invoice_pdf(asker, value)
        ask = AssignAsk.decode(value)
        if action_id == CANCEL_ACTION:
            return Outcome(views.assign_cancelled(project=ask.project, current=ask.current))
        if action_id != CONFIRM_ACTION:
            raise InvalidInput("That button is not one of mine; nothing was changed.")
        # Rights are checked again at the click: the asker may have lost them since.
        actor = self._actor(asker)
        if ask.user != actor.user_id:
            raise NotAllowed("This question was asked of someone else; nothing was changed.")
        now = self.clock()
        if now - ask.asked_at > self.confirm_within:
            raise Conflict(
                "This confirmation has expired; nothing was changed.",
                hint=f"Run `{self.command_name} assign {ask.project} {ask.target}` again.",
            )
        change = self.service.assign_project(
            actor,
            project_key=ask.project,
            group_key=ask.target,
            at=now,
            expected_group=ask.current,
        )
        return Outcome(views.change_done(change), change)

    def _invoice_pdf(self, asker: Asker, number: str) -> Outcome:
        from bot.documents.pdf import render_invoice_pdf  # noqa: PLC0415 - matplotlib/fpdf cost ~2 s at start-up

        if not c.INVOICE_NUMBER.fullmatch(number):
            raise InvalidInput("That button does not carry an invoice number; nothing was sent.")
        # Rights are checked again at the click: the button may have been forwarded, or the
        # clicker may have lost their membership since the invoice was shown.
        actor = self._actor(asker)
        invoice = self.service.invoice(actor, number=number.upper())
        locale = self.locale_for(asker, actor)
        pdf = render_invoice_pdf(
            invoice,
            seller_name=self.seller_name,
            seller_address=self.seller_address,
            locale=locale,
        )
        upload = views.Upload(f"{invoice.number}.pdf", f"Invoice {invoice.number}", pdf)
        files = views.Files((upload,), views.invoice_pdf_comment(invoice, locale))
        return Outcome(views.invoice_pdf_reply(invoice, upload), files=files)

    # -- home ----------------------------------------------------------------------------

    def _home(self, asker: Asker) -> Outcome:
        now = self.clock()
        with self.service.reading():
            actor = self._actor(asker)
            balances = self.service.balance(actor, at=now)
            owed = self.service.owed(actor, at=now)
        locale = self.locale_for(asker, actor)
        return Outcome(views.home_reply(balances, owed, locale, now=now, command=self.command_name))

    # -- people and locales --------------------------------------------------------------

    def _actor(self, asker: Asker) -> Actor:
        return self.service.actor(
            team_id=asker.team_id, user_id=asker.user_id, is_guest=asker.is_guest
        )

    def locale_for(self, asker: Asker, actor: Actor) -> Locale:
        """The user's Slack locale, else the organization's, else DEFAULT_LOCALE."""
        return asker.locale or parse_locale(actor.locale) or self.default_locale
