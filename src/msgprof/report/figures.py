"""Every page of the profiling PDF also as a PNG, for the HTML report (`snakemake --report`).

The pages are drawn once: `Pages` stands where the pages expect the PdfPages and, for each
page, adds it to the PDF and writes `figures/CATEGORY/NN-TITLE.png` (NN its page number,
TITLE its title made a file name), so the workflow can list each figure under its category.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_pdf import PdfPages

FIGURES_DIR = "figures"
#: Pixels per inch of a figure's PNG: an A4 page 1,169 pixels wide.
PNG_DPI = 100


def slug(title: str, limit: int = 60) -> str:
    """A title as a file name: lower case words joined by '-'."""
    words = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return words[:limit].rstrip("-") or "page"


class Pages:
    """The report's pages: into the PDF, and each as a PNG under `figures` (or not, None)."""

    def __init__(self, pdf: PdfPages, figures: Path | None) -> None:
        self.pdf = pdf
        self.figures = figures
        self.category = "report"
        self.count = 0

    @contextlib.contextmanager
    def under(self, category: str) -> Iterator[None]:
        """The pages drawn inside the block belong to `category` (a directory name)."""
        self.category = category
        yield

    def savefig(self, fig: Any) -> None:
        self.pdf.savefig(fig)
        self.count += 1
        if self.figures is None:
            return
        title = getattr(fig, "page_name", None) or "page"
        path = self.figures / self.category / f"{self.count:02d}-{slug(title)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=PNG_DPI)


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the directory `tmp` where `final` is, the old one removed."""
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
