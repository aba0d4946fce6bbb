# `snakemake knee`: the highest aggregate rate whose corrected p99 is within the SLO, found by
# bisection (msgprof knee, msgprof.experiment.knee) at the `knee` section's client count, with
# the settings of every point and the `paced` section's warm-up, arrivals and window. Not part
# of `all`: a search runs up to `probes` points one after another.
from msgprof.experiment.knee import KneeSearch, knee_argv

KNEE = config["knee"]
KNEE_SEARCH = KneeSearch(
    slo_p99_ms=(
        config["slo"]["p99_ms"] if KNEE["slo_p99_ms"] is None else KNEE["slo_p99_ms"]
    ),
    lo=KNEE["lo"],
    hi=KNEE["hi"],
    duration_s=KNEE["duration_s"],
    probes=KNEE["probes"],
)
# The probes' point model; a setting it refuses fails now, naming its flag.
KNEE_POINT = run_config(
    clients=KNEE["clients"],
    **pacing(KNEE["lo"] / KNEE["clients"], f"{number(KNEE['duration_s'])}s"),
)
KNEE_DIR = f"{RESULTS}/knee"
KNEE_COMMAND = shlex.join(
    ["msgprof", *knee_argv(KNEE_POINT, KNEE_SEARCH, Path(KNEE_DIR))]
)


rule knee:
    output:
        f"{KNEE_DIR}/knee.json",
    log:
        f"{RESULTS}/logs/knee.log",
    benchmark:
        f"{RESULTS}/benchmarks/knee.tsv"
    conda:
        "../envs/msgprof.yaml"
    resources:
        point_slot=1,
    params:
        command=KNEE_COMMAND,
    shell:
        "{params.command} > {log} 2>&1"
