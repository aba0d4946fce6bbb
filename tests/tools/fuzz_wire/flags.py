"""Files through which a fuzzing run and its fuzzer processes coordinate.

In the run's flag directory: `started-<name>` (a fuzzer is sending), `quota-<name>` (it has
sent its quota), `stop` (the run asks every fuzzer to stop once at its quota) and
`result-<name>.json` (what a fuzzer sent and saw, written as it exits).
"""

from __future__ import annotations

from pathlib import Path


class Flags:
    """The flag files of one fuzzer process, `name` (dealer-0, dealer-1, ..., raw)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory
        self.name = name

    def path(self, what: str) -> Path:
        return self.dir / f"{what}-{self.name}"

    def mark(self, what: str) -> None:
        self.path(what).touch()

    def marked(self, what: str) -> bool:
        return self.path(what).exists()

    def stop_requested(self) -> bool:
        return (self.dir / "stop").exists()

    @property
    def result(self) -> Path:
        return self.dir / f"result-{self.name}.json"
