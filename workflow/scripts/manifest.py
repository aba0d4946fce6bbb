"""Snakemake script of rule `manifest`: the config as used and the run's provenance."""

import logging
from pathlib import Path

from msgprof.experiment.manifest import write_manifest

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO)  # noqa: F821
manifest = write_manifest(
    config=snakemake.config,  # noqa: F821
    measured=snakemake.input,  # noqa: F821
    manifest_path=Path(snakemake.output.manifest),  # noqa: F821
    config_path=Path(snakemake.output.config),  # noqa: F821
    source_dir=Path(snakemake.scriptdir).parent.parent,  # noqa: F821
)
logging.info("manifest written: commit %s, config %s", manifest["git"], manifest["config_sha256"])
