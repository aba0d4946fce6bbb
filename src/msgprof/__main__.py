"""`python -m msgprof` is the `msgprof` command."""

from msgprof.cli import main

raise SystemExit(main())
