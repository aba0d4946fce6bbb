#!/usr/bin/env python3
"""A server that breaks protocol v1 on purpose: examples/servers/bare_server.py answering OK to
a duplicate seq, for the test that `msgprof conform` fails it and says which rule it broke."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "servers"))

import bare_server  # noqa: E402

bare_server.DUPLICATE = bare_server.OK
bare_server.main()
