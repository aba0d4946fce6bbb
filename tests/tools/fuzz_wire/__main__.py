"""`python tests/tools/fuzz_wire [options]`: run the fuzzer (see the package's docstring).

Run as a directory, Python puts the package's own folder first on sys.path; the folder above
it goes there instead, so the package imports as `fuzz_wire` and none of its modules shadows
another module of the same name.
"""

import sys
from pathlib import Path

if not __package__:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from fuzz_wire.cli import main

sys.exit(main())
