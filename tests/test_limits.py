"""Descriptor limits: raised as far as a run needs, or a clear error before anything starts.

A point whose clients need more descriptors than this host lets a process have fails before it
makes a directory or a process, naming RLIMIT_NOFILE and how to raise it; a process that may not
raise its hard limit (no CAP_SYS_RESOURCE) gets a clear error when asked to, and one that may
raises it. Real `msgprof` processes; the non-root case runs as the `nobody` user.
"""

from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from msgprof import limits
from msgprof.config import PointConfig
from msgprof.experiment import budget
from msgprof.load.capacity import CONNECT_WINDOW, descriptors_for
from msgprof.server.admission import connection_budget

HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def msgprof(
    *args: str, user: int | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "msgprof", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )


def test_a_point_past_the_ceiling_fails_before_it_starts(tmp_path: Path) -> None:
    clients = connection_budget(limits.ceiling(), 256, 1024) + 1
    out = tmp_path / "p"
    done = msgprof("point", "--clients", str(clients), "--messages", "1", "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert "msgprof point: error:" in done.stderr
    assert f"{clients} clients in one server" in done.stderr
    assert "fs.nr_open" in done.stderr or "RLIMIT_NOFILE" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()  # nothing was made, nothing was started


def test_too_few_client_processes_names_how_many_would_fit(tmp_path: Path) -> None:
    ceiling = limits.ceiling()
    if ceiling > 200_000:
        pytest.skip(f"a ceiling of {ceiling} descriptors takes too many clients to pass")
    clients = connection_budget(ceiling, 16, 16) - 10  # fits the server, not one client process
    assert descriptors_for(clients) > ceiling
    out = tmp_path / "p"
    done = msgprof(
        "point", "--clients", str(clients), "--messages", "1", "--processes", "1",
        "--max-open-files", "16", "--backlog", "16", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"{clients} clients in each of 1 client processes" in done.stderr
    assert f"--processes {budget.fewest_processes(clients, ceiling)}" in done.stderr
    assert not out.exists()


def test_fewest_processes() -> None:
    assert budget.fewest_processes(10, descriptors_for(10)) == 1
    assert budget.fewest_processes(10, descriptors_for(5)) == 2
    assert budget.fewest_processes(10, descriptors_for(4)) == 3
    assert budget.fewest_processes(10, 10) is None


def test_the_plan_uses_the_clients_default_connect_window() -> None:
    from msgprof.config import ClientConfig

    config = ClientConfig(endpoint="tcp://127.0.0.1:1", client_ids=[1], messages=1)
    assert config.connect_window == CONNECT_WINDOW


def test_fit_leaves_a_config_that_fits_alone() -> None:
    config = PointConfig(clients=100, messages=1)
    assert budget.fit(config) is config
    storm = PointConfig(clients=600, messages=1, rlimit_nofile=300)  # lower on purpose: allowed
    assert budget.fit(storm) is storm


@pytest.mark.skipif(limits.can_raise_hard(), reason="this process may raise its hard limit")
def test_asking_past_the_hard_limit_without_the_capability_is_an_error(tmp_path: Path) -> None:
    done = msgprof("server", "--store", "none", "--rlimit-nofile", str(HARD + 1))
    assert done.returncode == 2, done.stderr
    assert f"a soft RLIMIT_NOFILE of {HARD + 1}" in done.stderr
    assert "cannot raise the hard limit" in done.stderr and "Traceback" not in done.stderr


#: Runs `msgprof ARGS...` as the user `nobody`: the modules are loaded first, as root, because
#: the interpreter's own files may be where nobody cannot read them.
AS_NOBODY = """
import os, sys
import ssl, pyarrow.parquet, msgprof.cli, msgprof.server.server, msgprof.load.client
os.setgroups([]); os.setgid({uid}); os.setuid({uid})
sys.exit(msgprof.cli.main(sys.argv[1:]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become the nobody user")
def test_a_non_root_user_asking_for_a_higher_hard_limit_gets_a_clear_error(
    request: pytest.FixtureRequest,
) -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    shared = Path(tempfile.mkdtemp(prefix="msgprof-nobody-"))  # pytest's tmp is root's only
    shared.chmod(0o777)
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    for args in (["server", "--store", "none", "--rlimit-nofile", str(HARD + 1)],
                 ["client", "--endpoint", "tcp://127.0.0.1:1", "--client-ids", "1",
                  "--messages", "1", "--client-rlimit-nofile", str(HARD + 1),
                  "--out", str(shared / "c")]):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c", AS_NOBODY.format(uid=nobody), *args],
            capture_output=True, text=True, timeout=60, cwd="/",
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "it is not root" in done.stderr, done.stderr
        assert f"--nofile={HARD + 1}:{HARD + 1}" in done.stderr


@pytest.mark.skipif(
    not limits.can_raise_hard(),
    reason="this process lacks CAP_SYS_RESOURCE (root in a container that drops it cannot raise "
    "a hard limit)",
)
def test_a_capable_server_raises_its_hard_limit(tmp_path: Path) -> None:
    want = min(HARD + 1000, limits.nr_open())
    stats = tmp_path / "server.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "msgprof", "server", "--store", "none", "--rlimit-nofile",
         str(want), "--ready-file", str(tmp_path / "ready"), "--stats-out", str(stats)],
    )  # fmt: skip
    try:
        for _ in range(300):
            if (tmp_path / "ready").exists() or proc.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert json.loads(stats.read_text())["rlimit_nofile"] == {"soft": want, "hard": want}


def test_more_clients_than_one_address_has_ports_need_the_spread() -> None:
    ports = budget.ephemeral_ports()
    assert ports is not None
    config = PointConfig(clients=1, messages=1, clients_per_source=0)
    with pytest.raises(limits.LimitError, match="ephemeral ports"):
        budget.check_ports(config, ports + 1)
    budget.check_ports(PointConfig(clients=1, messages=1), ports + 1)  # 10,000 per address
    with pytest.raises(limits.LimitError, match="lower --clients-per-source"):
        budget.check_ports(
            PointConfig(clients=1, messages=1, clients_per_source=ports + 1), ports + 1
        )
