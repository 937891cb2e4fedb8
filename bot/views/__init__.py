"""Pure builders: billing_core views in, Block Kit (with a plain ``text`` fallback) out."""

from bot.views.admin import assign_cancelled, assign_question, audit_line, change_done
from bot.views.balance import balance_reply
from bot.views.base import Reply
from bot.views.errors import apology, refusal
from bot.views.files import (
    Files,
    Upload,
    delivered,
    export_comment,
    export_reply,
    invoice_pdf_comment,
    invoice_pdf_reply,
    upload_failed,
    usage_comment,
    usage_reply,
)
from bot.views.groups import groups_reply
from bot.views.help import help_reply
from bot.views.home import home_reply, home_view
from bot.views.invoices import invoice_reply, invoices_reply
from bot.views.owed import owed_reply
from bot.views.payments import credits_reply, payments_reply

__all__ = [
    "Files",
    "Reply",
    "Upload",
    "apology",
    "assign_cancelled",
    "assign_question",
    "audit_line",
    "balance_reply",
    "change_done",
    "credits_reply",
    "delivered",
    "export_comment",
    "export_reply",
    "groups_reply",
    "help_reply",
    "home_reply",
    "home_view",
    "invoice_pdf_comment",
    "invoice_pdf_reply",
    "invoice_reply",
    "invoices_reply",
    "owed_reply",
    "payments_reply",
    "refusal",
    "upload_failed",
    "usage_comment",
    "usage_reply",
]
