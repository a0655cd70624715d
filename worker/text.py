"""Text that must stay one line of printable characters: what clients and other services send that ends
up in a header, a URL or a Postgres ``text`` column."""

from __future__ import annotations

import re
from typing import Final

#: C0 controls (NUL included: Postgres text cannot hold it), DEL, C1 controls, and the Unicode line and
#: paragraph separators. httpx refuses control characters in a URL; the email package ends a header line
#: not only at CR and LF but at ``\x0b``, ``\x1c``, ``\x85``, ``\u2028`` and others (with the SMTPUTF8
#: policy), so a value holding one followed by ``Name : value`` became a header of its own.
CONTROL_CHARACTERS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def refuse_control_characters(value: str) -> str:
    """``value`` unchanged; ``ValueError`` if it holds one of :data:`CONTROL_CHARACTERS` (a pydantic
    after-validator)."""
    if CONTROL_CHARACTERS.search(value):
        raise ValueError("must not contain control characters or line breaks")
    return value
