"""Invoice PDFs and usage charts: pure renderers from billing read models to bytes.

Both use the DejaVu Sans that ships inside matplotlib, so documents look the same on every
machine and need no system fonts. Characters DejaVu lacks are first folded to a compatible form
it has (the fullwidth yen sign Babel uses for ja_JP becomes ¥); anything still missing (CJK
names, say) is drawn with matplotlib's Last Resort font, so text is never silently dropped.
"""

from __future__ import annotations

import unicodedata
from functools import cache
from pathlib import Path

import matplotlib
from matplotlib.ft2font import FT2Font

FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
REGULAR_FONT = FONT_DIR / "DejaVuSans.ttf"
BOLD_FONT = FONT_DIR / "DejaVuSans-Bold.ttf"
LAST_RESORT_FONT = FONT_DIR / "LastResortHE-Regular.ttf"
FONT_FAMILIES = ["DejaVu Sans", "Last Resort High-Efficiency"]  # matplotlib's names


@cache
def _covered() -> frozenset[int]:
    return frozenset(FT2Font(str(REGULAR_FONT)).get_charmap())


def fold_to_font(text: str) -> str:
    """``text`` with characters DejaVu Sans lacks swapped for their NFKC form where it has that."""
    covered = _covered()
    return "".join(ch if ord(ch) in covered else _fold(ch, covered) for ch in text)


def uncovered(text: str) -> set[int]:
    """Code points of ``text`` that DejaVu Sans cannot draw (control characters aside)."""
    covered = _covered()
    return {ord(ch) for ch in text if ord(ch) not in covered and ch >= " "}


def _fold(ch: str, covered: frozenset[int]) -> str:
    folded = unicodedata.normalize("NFKC", ch)
    return folded if folded and all(ord(c) in covered for c in folded) else ch
