"""The settings models are the one source of every default and check: the workflow's schema and
default config agree with them, the command line and child-process command lines come from them,
and a bad value fails once, naming its flag."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import yaml

from msgprof import setting
from msgprof.cli import _build_parser, _model, main
from msgprof.commands import COMMANDS, POINT_PROFILE, SERVER_PROFILE, command_argv, options
from msgprof.config import ClientConfig, PointConfig, ServerConfig
from msgprof.templates import argv_template, server_template

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"

#: The schema's keys that are point settings, as (section, key): everything of `server` and
#: `client`, and what the sweep passes to every point.
SWEEP_SETTINGS = ("payload_bytes", "ack_after")


#: Keys of the config's server section named otherwise in the point model, and one that is a
#: job of the workflow (workflow/rules/common.smk).
WORKFLOW_NAMES = {"command": "server_command"}
WORKFLOW_ONLY = {"conformance"}
#: Checks of text the schema cannot state (a command template's placeholders): the point model
#: runs them when the workflow builds a point's settings.
TEXT_CHECKS = {argv_template, server_template}


def _schema_settings() -> dict[tuple[str, str], dict]:
    properties = yaml.safe_load(SCHEMA.read_text())["properties"]
    found = {("sweep", key): properties["sweep"]["properties"][key] for key in SWEEP_SETTINGS}
    for section in ("server", "client"):
        found.update({(section, WORKFLOW_NAMES.get(k, k)): v
                      for k, v in properties[section]["properties"].items()
                      if k not in WORKFLOW_ONLY})  # fmt: skip
    return found


def _point_settings() -> dict[str, tuple]:
    return setting.settings_of(PointConfig)


def test_default_config_is_the_schema_defaults():
    """config/config.yaml and the schema's defaults describe the same default sweep, so a
    config file that leaves a key out gets what the default config says."""
    from snakemake.utils import validate

    from_schema: dict = {}
    validate(from_schema, str(SCHEMA), set_default=True)
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    validate(default, str(SCHEMA), set_default=True)
    assert default == from_schema


def test_schema_defaults_are_the_point_model_defaults():
    point = _point_settings()
    for (section, key), spec in _schema_settings().items():
        assert key in point, f"{section}.{key} is no setting of PointConfig"
        assert spec["default"] == point[key][0].default, f"{section}.{key}"


def test_schema_choices_and_bounds_are_the_point_model_checks():
    point = _point_settings()
    bounds = {setting.at_least_1: ("minimum", 1), setting.not_negative: ("minimum", 0),
              setting.positive: ("exclusiveMinimum", 0)}  # fmt: skip
    for (section, key), spec in _schema_settings().items():
        how = point[key][1]
        if how.choices is not None:
            assert set(spec["enum"]) == set(how.choices), f"{section}.{key}"
        if how.check is not None and how.check not in TEXT_CHECKS:
            bound, value = bounds[how.check]
            assert spec.get(bound) == value, f"{section}.{key}: {bound} {value}"


def test_every_setting_is_an_option_of_its_command():
    for name, command in COMMANDS.items():
        declared = set(setting.settings_of(command.model))
        if name == "master":  # its steps set these (and so a step is counted, never timed)
            declared -= {"clients", "messages", "first_client_id", "duration_s"}
            declared -= set(POINT_PROFILE) - set(SERVER_PROFILE)  # its clients are not sampled
        assert declared <= set(command.options), name


def test_units_are_in_names_and_help():
    words = {"s": "seconds", "ms": "milliseconds", "bytes": "bytes"}
    for model in (ServerConfig, ClientConfig, PointConfig):
        for name, (_spec, how) in setting.settings_of(model).items():
            if how.unit is not None:
                assert name.endswith("_" + how.unit) and words[how.unit] in how.help, name


def test_roles_that_differ_say_so():
    client = dict((name, default) for name, default, _how in options("client"))
    point = dict((name, default) for name, default, _how in options("point"))
    assert (client["start"], point["start"]) == ("on_connect", "all_connected")
    for name in ("timeout_s", "connect_timeout_s", "deadline_s", "payload_bytes"):
        assert client[name] == point[name], name


@pytest.mark.parametrize(
    "command, config, per_run",
    [
        ("server", ServerConfig(data_dir=Path("q"), ack_after="fsync", rlimit_nofile=300), {}),
        ("server", ServerConfig(store="none", curve_secret=Path("s"), curve_allow=Path("a")), {}),
        ("client", ClientConfig("tcp://127.0.0.1:5", [1, 2, 3, 9], 0, resend=True, timeout_s=0.5),
         {"out": Path("o")}),
        ("point", PointConfig(clients=7, messages=3, curve=True, processes=2, bind="localhost"),
         {"out": Path("o")}),
        ("master", PointConfig(clients=2, messages=3, keep_queues=True, deadline_s=5.5),
         {"out": Path("o"), "steps": "2x3,4x5"}),
    ],
)  # fmt: skip
def test_child_command_lines_give_the_child_the_same_settings(command, config, per_run):
    argv = command_argv(command, config, **per_run)
    args = _build_parser().parse_args(argv)
    extra = {"clients": 2, "messages": 3} if command == "master" else {}
    assert _model(args, **extra) == config
    for name, value in per_run.items():
        assert getattr(args, name) == value


def test_a_command_line_takes_no_unknown_argument():
    with pytest.raises(ValueError, match="takes no --steps"):
        command_argv("point", PointConfig(clients=1, messages=1), steps="1x1")


@pytest.mark.parametrize(
    "make, flag",
    [
        (lambda: PointConfig(clients=1, messages=1, timeout_s=0), "--timeout-s must be positive"),
        (lambda: PointConfig(clients=0, messages=1), "--clients must be at least 1"),
        (lambda: PointConfig(clients=1, messages=1, ack_after="never"), "--ack-after must be one of"),
        (lambda: PointConfig(clients=1, messages=1, processes=0), "--processes must be at least 1"),
        (lambda: ClientConfig("tcp://h:1", [1], 1, deadline_s=-1), "--deadline-s must be positive"),
        (lambda: ClientConfig("tcp://h:1", [1, 1], 1), "--client-ids must be unique"),
        (lambda: ServerConfig(data_dir=Path("q"), bind="h:1"), "--bind must be a ZeroMQ endpoint"),
        (lambda: ServerConfig(data_dir=Path("q"), heartbeat_ms=-1), "--heartbeat-ms must not be"),
        (lambda: ServerConfig(), "--data-dir is required"),
    ],
)  # fmt: skip
def test_a_bad_value_in_code_fails_at_construction_naming_its_flag(make, flag):
    with pytest.raises(ValueError, match=flag):
        make()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["point", "--clients", "1", "--messages", "1", "--out", "o", "--timeout-s", "0"],
         "argument --timeout-s: must be positive, got 0.0"),
        (["master", "--steps", "1x1", "--out", "o", "--backlog", "0"],
         "argument --backlog: must be at least 1, got 0"),
        (["client", "--endpoint", "e", "--client-ids", "3,3", "--messages", "1", "--out", "o"],
         "argument --client-ids: client id 3 given twice"),
        (["server", "--data-dir", "q", "--bind", "127.0.0.1:1"],
         "argument --bind: must be a ZeroMQ endpoint"),
        (["server", "--curve-secret", "s", "--data-dir", "q"],
         "msgprof server: error: CURVE needs both --curve-secret and --curve-allow"),
    ],
)  # fmt: skip
def test_a_bad_value_on_the_command_line_is_one_error_naming_its_flag(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_required_options_have_no_default():
    for command in COMMANDS:
        for name, default, how in options(command):
            if default is MISSING:
                assert how.parse is not None, f"{command} --{name}: a switch is never required"
    # --messages is required unless a paced point is timed (--duration-s): the model says so.
    assert {f.name for f in fields(PointConfig) if f.default is MISSING} == {"clients"}
