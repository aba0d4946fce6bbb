"""How a setting is declared, checked and spelled on a command line (the models are in config).

A settings model is a frozen dataclass that derives from `Checked`; each field made with one of
the helpers below (`positive_int`, `positive_float`, `choice`, `path`, `switch`, ... or
`setting` itself) holds its default, and in its metadata a `Setting`: the help text, how the
command line's text is parsed and shown again, the unit and the check. The flag is the field's
name with dashes (`timeout_s` is `--timeout-s`).

A check returns None for a good value, else what is wrong with it ("must be positive, got 0").
argparse runs it on the command line's text (the message after "argument --timeout-s:"), a
model's constructor on every value it is given (the message starts with the flag).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

Check = Callable[[Any], "str | None"]


def at_least_1(value: int) -> str | None:
    return None if value >= 1 else f"must be at least 1, got {value}"


def not_negative(value: float) -> str | None:
    return None if value >= 0 else f"must not be negative, got {value}"


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be positive, got {value}"


@dataclass(frozen=True)
class Setting:
    """How one field of a settings model is given on a command line, and what it may hold."""

    #: --help text; argparse fills in %(default)s.
    help: str
    #: Command-line text to value (argparse's type); None for a switch (the flag alone: True).
    parse: Callable[[str], Any] | None = str
    #: Value to command-line text: the inverse of parse.
    show: Callable[[Any], str] = str
    check: Check | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    #: Unit of a number: "s", "ms" or "bytes" (the field's name ends in it, the help says it).
    unit: str | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` for this setting, or None."""
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        return self.check(value) if self.check is not None else None


def setting(default: Any = MISSING, **how: Any) -> Any:
    """A model field: its default (none: the option is required) and its Setting (`how`)."""
    return field(default=default, metadata={"setting": Setting(**how)})


def positive_int(default: int | None | Any = MISSING, **how: Any) -> Any:
    """A count of at least 1 (None: unset, where that is the default)."""
    return setting(default, parse=int, check=at_least_1, **how)


def non_negative_int(default: int | Any = MISSING, **how: Any) -> Any:
    return setting(default, parse=int, check=not_negative, **how)


def non_negative_float(default: float, **how: Any) -> Any:
    return setting(default, parse=float, check=not_negative, **how)


def positive_float(default: float | None, **how: Any) -> Any:
    return setting(default, parse=float, check=positive, **how)


def choice(default: str, choices: tuple[str, ...], **how: Any) -> Any:
    return setting(default, choices=choices, **how)


def path(default: Path | None | Any = None, **how: Any) -> Any:
    return setting(default, parse=Path, **how)


def switch(**how: Any) -> Any:
    """Off unless the flag is given."""
    return setting(False, parse=None, **how)


def reworded(model: type, name: str, **changes: Any) -> Any:
    """Field `name` of `model` for a role that describes it in its own words (`help=`) or, for
    a reason said where it is used, starts from another default (`default=`)."""
    base: Field = model.__dataclass_fields__[name]  # type: ignore[attr-defined]
    default = changes.pop("default", base.default)
    how = replace(base.metadata["setting"], **changes)
    return field(default=default, metadata={"setting": how})


def flag(name: str) -> str:
    """The command-line flag of setting `name`: ``timeout_s`` is ``--timeout-s``."""
    return "--" + name.replace("_", "-")


def option_words(name: str, value: Any, how: Setting) -> list[str]:
    """How setting `name` holding `value` is said on a command line: its flag when a switch is
    on, flag and value for an option that has one, nothing otherwise (the child's default)."""
    if how.parse is None:
        return [flag(name)] if value else []
    return [] if value is None else [flag(name), how.show(value)]


def settings_of(model: Any) -> dict[str, tuple[Field, Setting]]:
    """The fields of a model (class or instance) that are settings, by name."""
    return {f.name: (f, f.metadata["setting"]) for f in fields(model) if "setting" in f.metadata}


class Checked:
    """Base of the settings models: construction checks every setting (an optional one left
    unset, None, has nothing to check); the message names the flag and the field."""

    def __post_init__(self) -> None:
        for name, (spec, how) in settings_of(self).items():
            value = getattr(self, name)
            if value is None and spec.default is None:
                continue
            problem = how.problem(value)
            if problem is not None:
                raise ValueError(f"{flag(name)} {problem} ({type(self).__name__}.{name})")
