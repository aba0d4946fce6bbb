# `snakemake capacity`: the most concurrent clients the server holds on this host and the limit
# behind the first failure (msgprof capacity, msgprof.experiment.capacity), with the settings of
# every point and paced clients (the `capacity` section's rate and duration_s). Not part of
# `all`: a search runs up to `probes` points, of thousands of clients, one after another.
from msgprof.experiment.capacity import CapacitySearch, capacity_argv

CAPACITY = config["capacity"]
CAPACITY_SEARCH = CapacitySearch(
    lo=CAPACITY["lo"],
    precision=CAPACITY["precision"],
    step=CAPACITY["step"],
    probes=CAPACITY["probes"],
)
# The probes' point model; a setting it refuses fails now, naming its flag.
CAPACITY_POINT = run_config(
    clients=CAPACITY["lo"],
    rate=float(CAPACITY["rate"]),
    duration_s=float(CAPACITY["duration_s"]),
)
CAPACITY_DIR = f"{RESULTS}/capacity"
CAPACITY_COMMAND = shlex.join(
    ["msgprof", *capacity_argv(CAPACITY_POINT, CAPACITY_SEARCH, Path(CAPACITY_DIR))]
)


rule capacity:
    output:
        f"{CAPACITY_DIR}/capacity.json",
    log:
        f"{RESULTS}/logs/capacity.log",
    benchmark:
        f"{RESULTS}/benchmarks/capacity.tsv"
    conda:
        "../envs/msgprof.yaml"
    resources:
        point_slot=1,
    params:
        command=CAPACITY_COMMAND,
    shell:
        "{params.command} > {log} 2>&1"
