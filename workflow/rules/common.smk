# Config validation (defaults come from the schema), the target list, and the command lines of
# the measured jobs: those come from the point model (msgprof.config), as every msgprof child
# process's do, and the config's settings are checked by it once, here.
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

try:
    from msgprof.commands import command_argv
    from msgprof.config import PointConfig
except ImportError:
    # A snakemake without msgprof beside it (--software-deployment-method conda) uses this one.
    sys.path.insert(0, str(Path(workflow.basedir) / "src"))
    from msgprof.commands import command_argv
    from msgprof.config import PointConfig

validate(config, workflow.source_path("../schemas/config.schema.yaml"))

RUN = config["run"]
RESULTS = f"results/{RUN}"
SWEEP = config["sweep"]
PACED = config["paced"]


def number(value):
    """A rate or a duration as a point's name spells it: 50, 2.5."""
    return f"{value:g}"


def sweep_points():
    """Names of the sweep's points: closed-loop CLIENTS-MESSAGES-REP (as ever), paced
    CLIENTS-MESSAGES-rRATE-REP, or CLIENTS-DURATIONs-rRATE-REP when the sweep is timed; then the
    paced grid's timed points. A -curve suffix marks a point run with CURVE."""
    names = []
    for clients in SWEEP["clients"]:
        for messages in SWEEP["messages"]:
            for rate in SWEEP["rate"]:
                if rate is None:
                    length = f"{messages}"
                elif SWEEP["duration_s"] is not None:
                    length = f"{number(SWEEP['duration_s'])}s"
                else:
                    length = f"{messages}"
                pace = "" if rate is None else f"-r{number(rate)}"
                names += [
                    f"{clients}-{length}{pace}-{rep}{'-curve' if curve else ''}"
                    for rep in range(1, SWEEP["repetitions"] + 1)
                    for curve in SWEEP["curve"]
                ]
    for clients in PACED["clients"]:
        for rate in PACED["rate"]:
            names += [
                f"{clients}-{number(PACED['duration_s'])}s-r{number(rate)}-{rep}"
                for rep in range(1, PACED["repetitions"] + 1)
            ]
    return list(
        dict.fromkeys(names)
    )  # a timed sweep names a point once for all messages


POINTS = sweep_points()


wildcard_constraints:
    clients=r"[1-9][0-9]*",
    messages=r"[1-9][0-9]*",
    rep=r"[1-9][0-9]*",
    security=r"(-curve)?",
    length=r"[1-9][0-9]*|[0-9]+(\.[0-9]+)?s",
    rate=r"[0-9]+(\.[0-9]+)?",


PROFILE = config["profile"]
# The server section: settings of the point model, but `command` (the point's server_command)
# and `conformance` (a job of the workflow: rules/conformance.smk).
SERVER = dict(config["server"])
CONFORMANCE = SERVER.pop("conformance")


def as_template(value):
    """A command template as the point model takes it: a list is joined, shell-quoted."""
    return shlex.join(value) if isinstance(value, list) else value


SERVER["server_command"] = as_template(SERVER.pop("command"))
SERVER["verify_command"] = as_template(SERVER["verify_command"])


def run_config(**fields):
    """The point model of a measured job: the config's settings (each key of `server` and
    `client`, the sweep's payload_bytes and ack_after, and the `profile` section, is a field
    of it) and `fields`.
    """
    return PointConfig(
        payload_bytes=SWEEP["payload_bytes"],
        ack_after=SWEEP["ack_after"],
        **SERVER,
        **config["client"],
        **{
            "profile": PROFILE["server"],
            "profile_clients": PROFILE["clients"],
            "profile_rate_hz": PROFILE["rate_hz"],
            "profile_native": PROFILE["native"],
            "profile_threads": PROFILE["threads"],
        }
        | fields,
    )


def pacing(rate, length):
    """The point model's fields of a paced point: its rate, its length (messages, or seconds
    when `length` ends in s) and the paced section's settings."""
    fields = {
        "rate": float(rate),
        "warmup_s": PACED["warmup_s"],
        "arrivals": PACED["arrivals"],
        "max_in_flight": PACED["max_in_flight"],
    }
    if length.endswith("s"):
        return fields | {"duration_s": float(length[:-1])}
    return fields | {"messages": int(length)}


# A setting the point model refuses fails now, naming its flag.
run_config(clients=1, messages=1)
for _rate in [r for r in SWEEP["rate"] if r is not None] + PACED["rate"]:
    run_config(clients=1, **pacing(_rate, f"{number(PACED['duration_s'])}s"))


def point_command(wildcards, output):
    """`msgprof point` of one sweep point (a -curve point with --curve)."""
    point = run_config(
        clients=int(wildcards.clients),
        messages=int(wildcards.messages),
        curve=bool(wildcards.security),
    )
    out = Path(output[0]).parent
    return shlex.join(["msgprof", *command_argv("point", point, out=out)])


def paced_point_command(wildcards, output):
    """`msgprof point` of one paced point."""
    point = run_config(
        clients=int(wildcards.clients),
        curve=bool(wildcards.security),
        **pacing(wildcards.rate, wildcards.length),
    )
    out = Path(output[0]).parent
    return shlex.join(["msgprof", *command_argv("point", point, out=out)])


def master_command(wildcards, output):
    """`msgprof master` of the config's ramp."""
    steps = config["master"]["steps"]
    clients, messages = steps[0].split("x")
    master = run_config(clients=int(clients), messages=int(messages))
    out = Path(output[0]).parent
    argv = command_argv("master", master, steps=",".join(steps), out=out)
    return shlex.join(["msgprof", *argv])


def measured_outputs():
    """Every point's and the master case's point.json / master.json."""
    outputs = expand(f"{RESULTS}/points/{{point}}/point.json", point=POINTS)
    if config["master"]["enabled"]:
        outputs.append(f"{RESULTS}/master/master.json")
    return outputs


def compare_run(name):
    """The run `compare_to` names: a run name under results/, or a path to a run directory."""
    path = Path(name)
    return path if len(path.parts) > 1 else Path("results") / name


def conformance_check():
    """conformance.txt, which every measured job waits for, when a server command is to be
    checked first (server.conformance required or warn)."""
    if SERVER["server_command"] is None or CONFORMANCE == "off":
        return []
    return [f"{RESULTS}/conformance.txt"]


def slo_table():
    """slo.csv when the config has gates (the report's page on them reads it)."""
    return [f"{RESULTS}/slo.csv"] if config["slo"]["gates"] else []


def all_targets():
    """Everything `rule all` asks for; measured outputs are targets too, so a deleted point is
    redone (and with it the aggregation) rather than silently skipped as an intermediate. With
    gates, their check (which fails the run when one failed); with compare_to, the comparison.
    """
    targets = measured_outputs() + [
        f"{RESULTS}/analysis.csv",
        f"{RESULTS}/points.csv",
        f"{RESULTS}/msg_proc_profiling.pdf",
        f"{RESULTS}/manifest.json",
    ]
    if config["slo"]["gates"]:
        targets.append(f"{RESULTS}/logs/slo.passed")
    if config["compare_to"] is not None:
        targets.append(rules.compare.output.csv)
    return targets
