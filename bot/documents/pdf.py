"""The invoice as an A4 PDF (SPEC 8: ``GET /api/v1/invoices/{number}.pdf``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import groupby

from babel import Locale
from fpdf import FPDF, FontFace, XPos, YPos
from fpdf.table import Table

from billing_core.model import InvoiceView
from billing_core.money import Money, total
from billing_core.rating import Line
from bot import format as fmt
from bot.documents import BOLD_FONT, LAST_RESORT_FONT, REGULAR_FONT, fold_to_font, uncovered
from bot.format import minus, rate

_FAMILY = "DejaVu"
_FALLBACK = "LastResort"
_MARGIN = 15.0  # mm
_GREY = (100, 100, 100)
_HEADINGS = FontFace(emphasis="BOLD", fill_color=(225, 225, 225))
_CATEGORY = FontFace(emphasis="BOLD", fill_color=(245, 245, 245))
_PROJECT = FontFace(size_pt=8, color=_GREY)
_STRONG = FontFace(emphasis="BOLD")
_COLUMNS = ("Item", "Quantity", "Billable", "Amount")
_COLUMN_WIDTHS = (88, 30, 30, 32)  # relative; the table spans the page width


def render_invoice_pdf(
    invoice: InvoiceView, *, seller_name: str, seller_address: str | None, locale: Locale
) -> bytes:
    """The invoice as an A4 PDF with real, extractable text, formatted in ``locale``."""
    pdf = _InvoicePdf(f"{seller_name} · Invoice {invoice.number}")
    _set_metadata(pdf, invoice, seller_name, locale)
    pdf.add_page()
    _heading(pdf, invoice, seller_name, seller_address, locale)
    _parties(pdf, invoice)
    _lines_table(pdf, invoice, locale)
    _totals(pdf, invoice, locale)
    return bytes(pdf.output())


class _InvoicePdf(FPDF):
    def __init__(self, footer_text: str) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self._footer_text = footer_text
        self.add_font(_FAMILY, "", REGULAR_FONT)
        self.add_font(_FAMILY, "B", BOLD_FONT)
        self._fallbacks: list[str] = []
        self._fallback_chars: set[int] = set()
        self.set_margins(_MARGIN, _MARGIN, _MARGIN)
        self.set_auto_page_break(auto=True, margin=20)
        self.set_font(_FAMILY, size=9)

    def normalize_text(self, text: str) -> str:
        # Every string fpdf2 measures or draws passes here first, so this one place sees all text.
        text = fold_to_font(text)
        missing = uncovered(text) - self._fallback_chars
        if missing:
            self._add_fallback(missing)
        return super().normalize_text(text)

    def _add_fallback(self, chars: set[int]) -> None:
        # Last Resort maps all of Unicode and takes seconds to load whole, so each document loads
        # only the characters it turns out to need, as they turn up.
        self._fallback_chars |= chars
        family = f"{_FALLBACK}{len(self._fallbacks)}"
        self.add_font(family, "", LAST_RESORT_FONT, unicode_range=sorted(chars))
        self._fallbacks.append(family)
        # Not exact: bold text with a character DejaVu lacks still finds the regular fallback.
        self.set_fallback_fonts(self._fallbacks, exact_match=False)

    def footer(self) -> None:
        self.set_y(-13)
        self.set_font(_FAMILY, "", 7)
        self.set_text_color(*_GREY)
        self.cell(0, 5, f"{self._footer_text} · page {self.page_no()} of {{nb}}", align="C")
        self.set_text_color(0)


def _set_metadata(pdf: FPDF, inv: InvoiceView, seller_name: str, locale: Locale) -> None:
    pdf.set_title(f"Invoice {inv.number}")
    pdf.set_author(seller_name)
    pdf.set_subject(f"{inv.group.name}, {fmt.period(inv.period, locale)}")
    pdf.set_lang(str(locale).replace("_", "-"))
    # A fixed date (the period's end, when the invoice was issued) rather than "now", so the
    # same invoice always renders to the same bytes.
    pdf.set_creation_date(inv.period.end)


def _heading(
    pdf: FPDF, inv: InvoiceView, seller_name: str, seller_address: str | None, locale: Locale
) -> None:
    top, half = pdf.get_y(), pdf.epw / 2
    pdf.set_font(style="B", size=14)
    pdf.multi_cell(half, 7, seller_name, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(style="", size=9)
    if seller_address:
        pdf.multi_cell(half, 4.5, seller_address, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    left_bottom = pdf.get_y()
    pdf.set_xy(pdf.l_margin + half, top)
    pdf.set_font(style="B", size=18)
    pdf.cell(half, 9, "Invoice", align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(style="", size=9)
    facts = [
        ("Invoice number", inv.number),
        ("Invoice date", fmt.day(inv.invoice_date, locale)),
        ("Due date", fmt.day(inv.due_date, locale)),
        ("Period", fmt.period(inv.period, locale)),
        ("Status", "Paid" if inv.status == "paid" else "Open"),
    ]
    _pairs(pdf, facts, width=half * 0.9)
    pdf.set_y(max(left_bottom, pdf.get_y()) + 8)


def _parties(pdf: FPDF, inv: InvoiceView) -> None:
    top, half = pdf.get_y(), pdf.epw / 2
    bill_to = [inv.organization_name or inv.organization, inv.billing_address or ""]
    if inv.vat_id:
        bill_to.append(f"VAT ID: {inv.vat_id}")
    bottoms = [_block(pdf, pdf.l_margin, top, half, "Bill to", bill_to)]
    if inv.shipping_address:
        ship_to = [inv.shipping_address]
        bottoms.append(_block(pdf, pdf.l_margin + half, top, half, "Ship to", ship_to))
    pdf.set_y(max(bottoms) + 4)
    group = f"Billing group: {inv.group.name} ({inv.group.key}) · currency {inv.group.currency}"
    if inv.payment_method:
        group += f" · payment method: {inv.payment_method}"
    pdf.multi_cell(0, 4.5, group, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(5)


def _block(pdf: FPDF, x: float, y: float, width: float, title: str, rows: list[str]) -> float:
    """A titled block of text at (x, y); returns where it ends."""
    pdf.set_xy(x, y)
    pdf.set_font(style="B", size=10)
    pdf.cell(width, 6, title, new_x=XPos.LEFT, new_y=YPos.NEXT)
    pdf.set_font(style="", size=9)
    pdf.multi_cell(width, 4.5, "\n".join(r for r in rows if r), new_x=XPos.LEFT, new_y=YPos.NEXT)
    return pdf.get_y()


def _pairs(pdf: FPDF, pairs: Sequence[tuple[str, str]], *, width: float) -> None:
    """Label/value rows in a borderless table flush with the right margin."""
    with pdf.table(
        width=width,
        align="RIGHT",
        col_widths=(1, 1.4),
        borders_layout="NONE",
        first_row_as_headings=False,
        line_height=4.8,
    ) as table:
        for label, value in pairs:
            row = table.row()
            row.cell(label)
            row.cell(value, align="RIGHT")


def _lines_table(pdf: FPDF, inv: InvoiceView, locale: Locale) -> None:
    # The headings row repeats at the top of every page the table runs onto.
    with pdf.table(
        col_widths=_COLUMN_WIDTHS,
        borders_layout="HORIZONTAL_LINES",
        headings_style=_HEADINGS,
        line_height=4.8,
        repeat_headings=1,
    ) as table:
        heading = table.row()
        for i, title in enumerate(_COLUMNS):
            heading.cell(title, align="LEFT" if i == 0 else "RIGHT")
        for category, lines in _by_category(inv.lines):
            _category_row(table, category, lines, locale)
            for line in lines:
                _line_rows(table, line, locale)
        if not inv.lines:
            table.row().cell("No charges in this period.", colspan=len(_COLUMNS))


def _by_category(lines: Sequence[Line]) -> Iterator[tuple[str, list[Line]]]:
    """Lines by category, each category's current usage first and late usage after it."""

    def order(line: Line) -> tuple[str, bool, str, str]:
        late = line.late_period.start.isoformat() if line.late_period else ""
        return (line.category, line.late_period is not None, late, line.metric or "")

    for category, group in groupby(sorted(lines, key=order), key=lambda x: x.category):
        yield category, list(group)


def _category_row(table: Table, category: str, lines: list[Line], locale: Locale) -> None:
    row = table.row(style=_CATEGORY)
    row.cell(category, colspan=3)
    subtotal = total((line.amount for line in lines), lines[0].amount.currency)
    row.cell(fmt.money(subtotal, locale), align="RIGHT")


def _line_rows(table: Table, line: Line, locale: Locale) -> None:
    label = line.metric or ("Subscription" if line.kind == "subscription" else line.category)
    if line.late_period is not None:
        label += f"\nLate usage of {fmt.period(line.late_period, locale)}"
    row = table.row()
    row.cell(label)
    row.cell(fmt.quantity(line.quantity, locale), align="RIGHT")
    row.cell(fmt.quantity(line.billable_quantity, locale), align="RIGHT")
    row.cell(fmt.money(line.amount, locale), align="RIGHT")
    for share in line.projects:
        project = table.row(style=_PROJECT)
        project.cell(f"↳ {share.project}", padding=(0, 1, 0, 6))
        project.cell(fmt.quantity(share.quantity, locale), align="RIGHT")
        project.cell("")
        project.cell(fmt.money(share.amount, locale), align="RIGHT")


def _totals(pdf: FPDF, inv: InvoiceView, locale: Locale) -> None:
    rows = _totals_rows(inv, locale)
    pdf.ln(5)
    # Keep the totals together: start a page rather than split them over two.
    if pdf.will_page_break(len(rows) * 5.5 + 12):
        pdf.add_page()
    with pdf.table(
        width=pdf.epw * 0.55,
        align="RIGHT",
        col_widths=(3, 2),
        borders_layout="NONE",
        first_row_as_headings=False,
        line_height=5.5,
    ) as table:
        for label, value, strong in rows:
            row = table.row(style=_STRONG if strong else None)
            row.cell(label)
            row.cell(value, align="RIGHT")
    _payment_note(pdf, inv, locale)


def _totals_rows(inv: InvoiceView, locale: Locale) -> list[tuple[str, str, bool]]:
    t = inv.totals

    def show(value: Money) -> str:
        return fmt.money(value, locale)

    rows = [("Subtotal", show(t.subtotal), False)]
    if inv.discount_codes or not t.discount.is_zero():
        codes = f" ({', '.join(inv.discount_codes)})" if inv.discount_codes else ""
        rows.append((f"Discount{codes}", minus(t.discount, locale), False))
    tax = f"Tax ({rate(inv.tax_rate, locale)})" if inv.tax_rate else "Tax"
    rows += [(tax, show(t.tax), False), ("Total", show(t.total), True)]
    if not t.credits_applied.is_zero():
        rows.append(("Credits applied", minus(t.credits_applied, locale), False))
    rows += [
        ("Amount due", show(t.amount_due), True),
        ("Amount paid", show(inv.amount_paid), False),
        ("Outstanding", show(inv.outstanding), True),
    ]
    return rows


def _payment_note(pdf: FPDF, inv: InvoiceView, locale: Locale) -> None:
    if inv.status == "paid" or inv.outstanding.amount <= 0:
        note = "Status: paid. Thank you."
    else:
        due = fmt.day(inv.due_date, locale)
        note = f"Status: open. Please pay {fmt.money(inv.outstanding, locale)} by {due}."
    pdf.ln(4)
    pdf.multi_cell(0, 5, note, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
