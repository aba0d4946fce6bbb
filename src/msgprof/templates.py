"""Command-line templates of a server that is not msgprof's (--server-command, --verify-command):
a command line split as a shell would split it (never run by one), whose arguments may hold
{ready} (a file the server writes its endpoint to), {data} (a directory it may use) and {port}
(a free port msgprof chose). Checked when a setting is given, filled when the server starts.
"""

from __future__ import annotations

import shlex
import string

#: The placeholders a template may hold.
TEMPLATE_FIELDS = ("ready", "data", "port")


def argv_template(value: str) -> str | None:
    """A command line split as a shell would (never run by one), with {ready} {data} {port}."""
    try:
        argv = shlex.split(value)
        names = {name for arg in argv for _t, name, _f, _c in string.Formatter().parse(arg)
                 if name is not None}  # fmt: skip
    except ValueError as err:
        return f"cannot be read as a command line: {err}"
    if not argv:
        return "is empty"
    unknown = sorted(names - set(TEMPLATE_FIELDS))
    if unknown:
        return f"has {{{unknown[0]}}}: the placeholders are {{ready}}, {{data}} and {{port}}"
    return None


def server_template(value: str) -> str | None:
    """An argv template that says how msgprof knows the server is ready: {ready} or {port}."""
    problem = argv_template(value)
    if problem is None and "{ready}" not in value and "{port}" not in value:
        problem = ("needs {ready} (a file the server writes its endpoint to) or {port} (a port "
                   "msgprof chooses and probes)")  # fmt: skip
    return problem


def fill(template: str, **values: object) -> list[str]:
    """The argv of `template` with its placeholders replaced by `values` (str() of each)."""
    return [arg.format(**{k: str(v) for k, v in values.items()}) for arg in shlex.split(template)]
