"""What the loop records per message sent, in typed arrays until the outputs are written."""

from __future__ import annotations

import array
from dataclasses import dataclass, field


@dataclass
class Rows:
    """One row per message sent, kept in typed arrays until written."""

    index: array.array = field(default_factory=lambda: array.array("I"))  # client index
    seq: array.array = field(default_factory=lambda: array.array("Q"))
    t_send: array.array = field(default_factory=lambda: array.array("q"))
    rtt: array.array = field(default_factory=lambda: array.array("q"))
    code: array.array = field(default_factory=lambda: array.array("b"))
