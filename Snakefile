# msgprof: sweep client counts and messages per client against the message-processing server,
# run the seed's master test case, and aggregate everything into results/<run>/.
# Usage: snakemake --cores 2            (the profile in profiles/default is picked up)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/conformance.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/master.smk"
include: "workflow/rules/calibrate.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/knee.smk"
include: "workflow/rules/capacity.smk"
include: "workflow/rules/review.smk"


rule all:
    default_target: True
    input:
        all_targets(),
