# Config validation (defaults come from the schema) and the target list.
import shlex

from snakemake.utils import validate

validate(config, workflow.source_path("../schemas/config.schema.yaml"))

RUN = config["run"]
RESULTS = f"results/{RUN}"
SWEEP = config["sweep"]
POINTS = [
    f"{clients}-{messages}-{rep}{'-curve' if curve else ''}"
    for clients in SWEEP["clients"]
    for messages in SWEEP["messages"]
    for rep in range(1, SWEEP["repetitions"] + 1)
    for curve in SWEEP["curve"]
]


wildcard_constraints:
    clients=r"[1-9][0-9]*",
    messages=r"[1-9][0-9]*",
    rep=r"[1-9][0-9]*",
    security=r"(-curve)?",


def run_options():
    """`msgprof point`/`master` options shared by every measured job, from the config."""
    server, client = config["server"], config["client"]
    options = {
        "--payload-bytes": SWEEP["payload_bytes"],
        "--ack-after": SWEEP["ack_after"],
        "--sync-method": server["sync_method"],
        "--flush-interval-ms": server["flush_interval_ms"],
        "--backlog": server["backlog"],
        "--max-open-files": server["max_open_files"],
        "--max-payload-bytes": server["max_payload_bytes"],
        "--rlimit-nofile": server.get("rlimit_nofile"),
        "--processes": client.get("processes"),
        "--timeout-s": client["timeout_s"],
        "--connect-timeout-s": client["connect_timeout_s"],
        "--deadline-s": client["deadline_s"],
        "--start": client["start"],
        "--launcher": client["launcher"],
        "--bind": server.get("bind"),
    }
    return " ".join(
        f"{name} {shlex.quote(str(value))}"
        for name, value in options.items()
        if value is not None
    )


def measured_outputs():
    """Every point's and the master case's point.json / master.json."""
    outputs = expand(f"{RESULTS}/points/{{point}}/point.json", point=POINTS)
    if config["master"]["enabled"]:
        outputs.append(f"{RESULTS}/master/master.json")
    return outputs


def all_targets():
    """Everything `rule all` asks for; measured outputs are targets too, so a deleted point is
    redone (and with it the aggregation) rather than silently skipped as an intermediate.
    """
    return measured_outputs() + [
        f"{RESULTS}/analysis.csv",
        f"{RESULTS}/points.csv",
        f"{RESULTS}/msg_proc_profiling.pdf",
        f"{RESULTS}/manifest.json",
    ]
