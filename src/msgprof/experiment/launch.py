"""Where a point's client processes run: beside the server (`local`) or on other nodes (`srun`).

`local` starts every client process on this host and binds the server to loopback. `srun` is
for a point run inside a SLURM allocation (the batch script of `sbatch`, or a step of it): the
server runs here, on the allocation's node that runs `msgprof point`, bound to this node's real
address; each client process is a job step started with `srun` on one of the *other* nodes of the
allocation, connecting to the address in the server's ready file. With a single node the clients
run on the server's node, as steps that overlap it, and point.json says so (`co_located`).

The bind address is always explicit: `--bind` when given, else loopback (`local`) or the address
SLURM reaches this node at (`srun`: NodeAddr of `scontrol show node`). A wildcard address
(0.0.0.0, ::, *) is refused: the ready file must carry an address clients can connect to.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Any, Protocol

from msgprof.config import LAUNCHERS

LOOPBACK_BIND = "tcp://127.0.0.1:0"
#: Seconds a SLURM query (scontrol) may take.
SLURM_QUERY_TIMEOUT_S = 30.0
#: Seconds srun gets to end its step after SIGTERM before it is killed.
SRUN_STOP_GRACE_S = 15.0
#: SLURM variables a nested srun keeps: the job's identity. The others (CPUs, memory, tasks of
#: the step that runs `msgprof point`) would silently become the client step's request.
_SLURM_KEEP = {"SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CONF", "SLURM_CLUSTER_NAME"}
#: First line of a client log under srun: which step on which node ran it.
_STEP_BANNER = 'echo "srun step $SLURM_JOB_ID.$SLURM_STEP_ID on node $SLURMD_NODENAME"; exec "$@"'


class LaunchSettings(Protocol):
    """What this module reads of a PointConfig."""

    launcher: str
    bind: str | None
    processes: int | None
    clients: int


@dataclass(frozen=True)
class Placement:
    """Where the server and the client processes of a point run."""

    kind: str
    bind: str
    server_node: str | None = None
    client_nodes: tuple[str, ...] = ()
    cpus: dict[str, int] = field(default_factory=dict)
    nodes: tuple[str, ...] = ()
    job_id: str | None = None

    @property
    def co_located(self) -> bool:
        return self.kind == "local" or self.client_nodes == (self.server_node,)

    def node_of(self, k: int) -> str:
        """Node of client process k: round robin over the client nodes."""
        return self.client_nodes[k % len(self.client_nodes)]


def check(launcher: str, bind: str | None) -> None:
    """Raise ValueError for a launcher or bind address that cannot work here and now."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"--launcher must be one of {', '.join(LAUNCHERS)}, not {launcher!r}")
    if bind is not None:
        normalise_bind(bind, resolve=False)
    if launcher == "srun":
        if not os.environ.get("SLURM_JOB_ID"):
            raise ValueError(
                "--launcher srun needs a SLURM allocation (SLURM_JOB_ID is not set): run "
                "`msgprof point` in an sbatch script, or under salloc/srun"
            )
        for tool in ("srun", "scontrol"):
            if shutil.which(tool) is None:
                raise ValueError(f"--launcher srun needs {tool}, which is not on PATH")


def normalise_bind(bind: str, resolve: bool = True) -> str:
    """A ZeroMQ endpoint from `--bind` (an endpoint, HOST or HOST:PORT); wildcards refused."""
    if "://" in bind:
        scheme, _, rest = bind.partition("://")
        if scheme != "tcp":
            return bind  # ipc:// and inproc:// name no host
        host, port = _split_host_port(rest)
    else:
        host, port = _split_host_port(bind)
    if host in ("*", "0.0.0.0", "::", "[::]", ""):
        raise ValueError(
            f"--bind {bind!r} is a wildcard address: give the address the clients connect to "
            "(e.g. this node's IP or hostname)"
        )
    if not port.isdigit():
        raise ValueError(f"--bind {bind!r}: the port must be a number (0 picks a free one)")
    if resolve:
        host = resolve_host(host)
    return f"tcp://{_bracket(host)}:{port}"


def _split_host_port(text: str) -> tuple[str, str]:
    if text.startswith("["):  # [v6]:port
        host, _, rest = text[1:].partition("]")
        return host, rest.lstrip(":") or "0"
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port or "0"
    return text, "0"  # a bare host or a bare IPv6 address


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def resolve_host(host: str) -> str:
    """`host` as an IP address (IPv4 preferred): ZeroMQ binds addresses, not names."""
    with contextlib.suppress(ValueError):  # not a literal address: resolve the name below
        return str(ipaddress.ip_address(host))
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)[0][4][0]
        except (socket.gaierror, IndexError):
            continue
    raise ValueError(f"cannot resolve {host!r} to an address to bind")


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=SLURM_QUERY_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise ValueError(
            f"{' '.join(argv)} did not answer within {SLURM_QUERY_TIMEOUT_S} s"
        ) from err
    if done.returncode != 0:
        raise ValueError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def expand_cpus_per_node(text: str, count: int) -> list[int]:
    """SLURM_JOB_CPUS_PER_NODE ("2(x3),1") as one number per node; 1 each when unknown."""
    cpus: list[int] = []
    for part in filter(None, text.split(",")):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            return [1] * count
        cpus += [int(match.group(1))] * int(match.group(2) or 1)
    return cpus if len(cpus) == count else [1] * count


def node_address(node: str) -> str:
    """The address SLURM reaches `node` at (its NodeAddr), else the node name."""
    text = _run(["scontrol", "show", "node", "-o", node])
    match = re.search(r"\bNodeAddr=(\S+)", text)
    return match.group(1) if match else node


@functools.lru_cache(maxsize=16)
def _srun_placement(
    bind: str | None, job_id: str, nodelist: str, here: str, cpus_text: str
) -> Placement:
    nodes = (
        tuple(_run(["scontrol", "show", "hostnames", nodelist]).split()) if nodelist else (here,)
    )
    if here not in nodes:
        raise ValueError(
            f"--launcher srun runs the server on this host ({here}), which is not a node of "
            f"job {job_id} ({', '.join(nodes)}): run `msgprof point` in the batch script or "
            "under srun"
        )
    others = tuple(n for n in nodes if n != here)
    endpoint = normalise_bind(bind if bind is not None else node_address(here))
    return Placement(
        kind="srun",
        bind=endpoint,
        server_node=here,
        client_nodes=others or (here,),
        cpus=dict(zip(nodes, expand_cpus_per_node(cpus_text, len(nodes)))),
        nodes=nodes,
        job_id=job_id,
    )


def placement(config: LaunchSettings) -> Placement:
    """Where the point described by `config` runs (SLURM is asked once per allocation)."""
    check(config.launcher, config.bind)
    if config.launcher == "local":
        bind = LOOPBACK_BIND if config.bind is None else normalise_bind(config.bind)
        return Placement(kind="local", bind=bind)
    env = os.environ
    return _srun_placement(
        config.bind,
        env["SLURM_JOB_ID"],
        env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", ""),
        env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0],
        env.get("SLURM_JOB_CPUS_PER_NODE", ""),
    )


def client_processes(config: LaunchSettings) -> int:
    """Client processes of a point: --processes, else the usable cores here (`local`, or `srun`
    co-located) or the CPUs of the client nodes (`srun`); never more than the clients."""
    cores = len(os.sched_getaffinity(0))
    if config.launcher == "local":
        return max(1, min(config.processes or cores, config.clients))
    place = placement(config)
    if config.processes:
        wanted = config.processes
    elif place.co_located:
        wanted = cores
    else:
        wanted = sum(place.cpus.get(node, 1) for node in place.client_nodes)
    return max(1, min(wanted, config.clients))


def client_step(place: Placement, k: int, processes: int) -> tuple[str, int, str]:
    """(node, CPUs, --exclusive or --overlap) of the srun step of client process k."""
    node = place.node_of(k)
    sharing = sum(1 for j in range(processes) if place.node_of(j) == node)
    cpus = max(1, place.cpus.get(node, 1) // sharing)
    # Steps on other nodes get CPUs of their own; co-located steps overlap the step that runs
    # the server, and so do steps of a node given more processes than it has CPUs (--processes):
    # exclusive steps would wait for each other there.
    crowded = place.co_located or sharing > place.cpus.get(node, 1)
    return node, cpus, "--overlap" if crowded else "--exclusive"


def client_argv(config: LaunchSettings, k: int, processes: int, argv: list[str]) -> list[str]:
    """The command that starts client process k (of `processes`) of this point."""
    place = placement(config)
    if place.kind == "local":
        return argv
    node, cpus, share = client_step(place, k, processes)
    drop = sorted(v for v in os.environ if v.startswith(("SLURM_", "SRUN_", "SBATCH_"))
                  and v not in _SLURM_KEEP)  # fmt: skip
    unset = ["env"] + [arg for v in drop for arg in ("-u", v)] if drop else []
    return unset + [
        "srun", "--nodes=1", "--ntasks=1", f"--cpus-per-task={cpus}", share,
        f"--nodelist={node}", f"--job-name=msgprof-client-{k}", "--kill-on-bad-exit=1",
        "sh", "-c", _STEP_BANNER, "msgprof-client",
    ] + argv  # fmt: skip


def stop_grace_s(launcher: str) -> float:
    """Seconds a client process that overran its deadline gets after SIGTERM: srun must end
    its step (a killed srun leaves the step running until the job ends); a local one is
    killed at once."""
    return SRUN_STOP_GRACE_S if launcher == "srun" else 0.0


def describe(config: LaunchSettings) -> dict[str, Any]:
    """The `launcher` record of point.json: where server and clients ran, and the SLURM
    allocation the point ran in (when it ran in one), as seen from inside it."""
    place = placement(config)
    doc: dict[str, Any] = {"kind": place.kind, "co_located": place.co_located, "bind": place.bind}
    if place.kind == "srun":
        processes = client_processes(config)
        doc.update(
            server_node=place.server_node,
            client_nodes=list(place.client_nodes),
            nodes=list(place.nodes),
            client_steps=[
                {"node": node, "cpus": cpus, "share": share.lstrip("-")}
                for node, cpus, share in (
                    client_step(place, k, processes) for k in range(processes)
                )
            ],
            # Every process stamps its load window with its own host's monotonic clock.
            shared_clock=place.co_located,
        )
        if place.co_located:
            doc["note"] = "one node in the allocation: the clients ran on the server's node"
    job = {
        key: os.environ[var]
        for key, var in (
            ("job_id", "SLURM_JOB_ID"),
            ("step_id", "SLURM_STEP_ID"),
            ("node", "SLURMD_NODENAME"),
            ("nodelist", "SLURM_JOB_NODELIST"),
            ("cpus_per_node", "SLURM_JOB_CPUS_PER_NODE"),
            ("cpus_on_node", "SLURM_CPUS_ON_NODE"),
            ("cpus_per_task", "SLURM_CPUS_PER_TASK"),
            ("mem_per_node_mb", "SLURM_MEM_PER_NODE"),
            ("partition", "SLURM_JOB_PARTITION"),
        )
        if os.environ.get(var)
    }
    if job:
        job.update(_job_limits(job["job_id"]) if "job_id" in job else {})
        doc["slurm"] = job
    return doc


def _job_limits(job_id: str) -> dict[str, str]:
    """The job's limits as slurmctld granted them (time limit, TRES, exclusivity); {} when
    scontrol cannot tell."""
    try:
        text = _run(["scontrol", "show", "job", "-o", job_id])
    except (ValueError, OSError):
        return {}
    fields = dict(re.findall(r"(\w+)=(\S*)", text))
    wanted = {"time_limit": "TimeLimit", "tres": "TRES", "oversubscribe": "OverSubscribe",
              "min_memory_node": "MinMemoryNode", "num_nodes": "NumNodes"}  # fmt: skip
    return {key: fields[name] for key, name in wanted.items() if name in fields}
