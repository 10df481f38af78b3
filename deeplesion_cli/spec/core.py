"""One declaration per option: :class:`Option` and the :class:`Spec` of a command.

An option of ``lesion train frcnn`` (or ``lesion cfg``, ``lesion eval``...) is written once, as an
:class:`Option`: its name, type, default, bounds, choices, help and whether a resumed run may
change it. Everything else is derived from that declaration:

* the click option of the command (:meth:`Spec.click_options`),
* the check of a value from any source, command line, TOML or library (:meth:`Option.problem`),
* the value a matrix TOML file gives, checked and normalised (:meth:`Option.from_toml`),
* the command-line words that ``lesion matrix --print`` and ``lesion demo`` show
  (:meth:`Spec.words`), and
* the record in a run's ``args.json`` (:meth:`Spec.record`).

This module imports click only (no torch, no numpy): ``lesion --help`` reads it.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from deeplesion_cli.errors import LesionInputError

#: option types: how a value is read from the command line and from TOML, and written back
KINDS = ("str", "int", "float", "bool", "path", "int_list", "str_list", "size", "program",
         "gpus")


class OptionError(LesionInputError):
    """An option value that cannot work, or that a resumed run may not change; ``option`` is the
    option's name (``size_px``), the message names its flag (``--size``)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


def type_name(value) -> str:
    """``value``'s type as a sentence says it (``an integer``)."""
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table", tuple: "a list"}.get(type(value),
                                                                  type(value).__name__)


def parse_int_list(text: str) -> tuple[int, ...]:
    """``"16,22"`` -> ``(16, 22)``; ValueError on anything else."""
    items = tuple(int(v) for v in text.split(",") if v.strip())
    if not items:
        raise ValueError("empty")
    return items


def shell_path(path, cwd: Path | None) -> str:
    """``path`` relative to ``cwd`` when it lies below it, else as given (for printed lines)."""
    path = Path(path)
    if cwd is None:
        return str(path)
    try:
        rel = os.path.relpath(path, cwd)
    except ValueError:  # pragma: no cover - another drive on Windows
        return str(path)
    return str(path) if rel == ".." or rel.startswith(".." + os.sep) else rel


def shell_line(words: Iterable) -> str:
    """Words joined into one line a POSIX shell reads back as the same words."""
    return " ".join(shlex.quote(str(w)) for w in words)


def number_word(value) -> str:
    """A number as the command line takes it back exactly (``1e-05``, ``0.3``, ``4``)."""
    return repr(float(value)) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Option:
    """One option of one command, declared once.

    ``name`` is the Python, TOML and args.json name (``size_px``); ``flag`` the command-line
    flag (default ``--`` + name with ``-``; ``aliases`` are accepted too). A ``str_list`` is a
    repeatable flag whose values may also be comma-separated. ``low``/``high`` bound numbers (and the items of an
    ``int_list``), open when ``low_open``/``high_open``. ``cli=False``: an option the library
    and args.json carry but the command line does not offer. ``resumable``: ``--resume`` may
    change it. ``compared``: it changes results, so a comparison table shows it.
    """

    name: str
    kind: str
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    flag: str | None = None
    short: str | None = None
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    cli: bool = True
    resumable: bool = False
    compared: bool = True
    show_default: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name}: kind {self.kind!r} not one of {KINDS}")

    # --------------------------------------------------------------------------- naming
    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    # ------------------------------------------------------------------------- checking
    def _bounds_text(self) -> str:
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {number_word(self.low)}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {number_word(self.high)}"
        return " and ".join(t for t in (lo, hi) if t)

    def _in_bounds(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def problem(self, value) -> str | None:
        """Why ``value`` cannot be this option's (a message naming the flag), or None.
        ``None`` values pass: they mean "the default"."""
        if value is None:
            return None
        flag = self.cli_flag
        if self.choices is not None and value not in self.choices:
            return f"{flag} {value!r}: one of {', '.join(self.choices)}"
        if self.kind in ("int", "float"):
            if self.kind == "float" and not math.isfinite(value):
                return f"{flag} must be a finite number (got {value})"
            if not self._in_bounds(value):
                return f"{flag} must be {self._bounds_text()} (got {number_word(value)})"
        if self.kind == "int_list" and not all(self._in_bounds(v) for v in value):
            return f"{flag} {list(value)}: every value must be {self._bounds_text()}"
        return None

    def check(self, value) -> None:
        """:class:`OptionError` when :meth:`problem` finds one."""
        message = self.problem(value)
        if message:
            raise OptionError(message, self.name)

    # --------------------------------------------------------------------------- click
    def click_type(self):
        import click

        if self.choices is not None:
            return click.Choice(list(self.choices))
        if self.kind == "int":
            if self.low is None and self.high is None:
                return int
            return click.IntRange(None if self.low is None else int(self.low),
                                  None if self.high is None else int(self.high),
                                  min_open=self.low_open, max_open=self.high_open)
        if self.kind == "float":
            if self.low is None and self.high is None:
                return float
            return click.FloatRange(self.low, self.high, min_open=self.low_open,
                                    max_open=self.high_open)
        if self.kind == "path":
            return click.Path(exists=True, dir_okay=False, path_type=Path)
        return str

    def click_option(self) -> Callable:
        """The click decorator of this option (its value reaches the command as ``name``;
        :meth:`from_cli` turns it into the option's value)."""
        import click

        names = [self.short] if self.short else []
        names += [self.cli_flag, *self.aliases]
        kwargs: dict = {"help": self.help or None}
        if self.kind == "bool":
            return click.option(*names, self.name, is_flag=True, default=False, **kwargs)
        kwargs.update(type=self.click_type(), default=self.default,
                      show_default=self.show_default and self.default is not None)
        if self.metavar:
            kwargs["metavar"] = self.metavar
        if self.kind == "str_list":
            kwargs.update(multiple=True, default=tuple(self.default or ()))
        if self.kind == "int_list" and self.default is not None:
            kwargs["default"] = ",".join(str(v) for v in self.default)
        return click.option(*names, self.name, **kwargs)

    def from_cli(self, value):
        """The option's value from click's (paths absolute, lists parsed); click.BadParameter
        when a list does not parse or lies out of bounds."""
        if value is None:
            return None
        if self.kind == "path":
            return str(Path(value).resolve())
        if self.kind == "str_list":
            return tuple(n for item in value for n in item.split(",") if n)
        if self.kind == "int_list":
            import click

            try:
                items = parse_int_list(value)
            except ValueError:
                raise click.BadParameter(f"{value!r}: expected comma-separated integers, e.g. "
                                         "16,22", param_hint=self.cli_flag) from None
            message = self.problem(items)
            if message:
                raise click.BadParameter(message, param_hint=self.cli_flag)
            return items
        return value

    # ---------------------------------------------------------------------------- TOML
    def from_toml(self, value, base: Path):
        """``value`` from a TOML file (relative paths from the file's folder ``base``),
        normalised and checked; ValueError with the reason otherwise."""
        kind = self.kind
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {type_name(value)} ({value!r})")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected an integer, got {type_name(value)} ({value!r})")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"expected a number, got {type_name(value)} ({value!r})")
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {value!r}")
            value = float(value)
        elif kind in ("str", "program"):
            if not isinstance(value, str) or not value:
                raise ValueError(f"expected a non-empty string, got {type_name(value)} "
                                 f"({value!r})")
            if kind == "program" and ("/" in value or value.startswith("~")):
                value = str((base / Path(value).expanduser()).resolve())
        elif kind == "path":
            if not isinstance(value, str) or not value:
                raise ValueError(f"expected a path (a string), got {type_name(value)} "
                                 f"({value!r})")
            value = str((base / Path(value).expanduser()).resolve())
        elif kind == "int_list":
            if (not isinstance(value, list) or not value
                    or any(isinstance(v, bool) or not isinstance(v, int) for v in value)):
                raise ValueError(f"expected a non-empty list of integers, got {value!r}")
            value = tuple(value)
        elif kind == "str_list":
            if not isinstance(value, list) or any(not isinstance(v, str) for v in value):
                raise ValueError(f"expected a list of strings, got {value!r}")
            value = tuple(value)
        elif kind == "size":
            value = _toml_size(value)
        elif kind == "gpus":
            value = _toml_gpus(value)
        message = self.problem(value)
        if message:
            raise ValueError(message.replace(f"{self.cli_flag} ", "", 1)
                             if message.startswith(f"{self.cli_flag} ") else message)
        return value

    # ---------------------------------------------------------------------- printing back
    def words(self, value, cwd: Path | None = None) -> list[str]:
        """The command-line words that give ``value`` (none when None or a false flag)."""
        if value is None or value is False or not self.cli:
            return []
        if self.kind == "bool":
            return [self.cli_flag]
        if self.kind == "path":
            return [self.cli_flag, shell_path(Path(value), cwd)]
        if self.kind == "program":
            return [self.cli_flag, shell_path(Path(value), cwd) if os.path.isabs(value)
                    else value]
        if self.kind == "str_list":
            return [word for item in value for word in (self.cli_flag, item)]
        if self.kind == "int_list":
            return [self.cli_flag, ",".join(str(v) for v in value)]
        return [self.cli_flag, number_word(value)]

    def to_json(self, value):
        return list(value) if isinstance(value, tuple) else value

    def from_json(self, value):
        if self.kind in ("int_list", "str_list") and value is not None:
            return tuple(value)
        return value


def _toml_size(value) -> str:
    from deeplesion_cli.anchors import parse_size

    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected an integer or \"WxH\", got {type_name(value)} ({value!r})")
    width, height = parse_size(value)
    if width % 32 or height % 32:
        raise ValueError(f"{value!r}: width and height must be multiples of 32 (darknet)")
    return str(width) if width == height else f"{width}x{height}"


def _toml_gpus(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, list) and value and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return ",".join(str(v) for v in value)
    if isinstance(value, str) and re.fullmatch(r"\d+(,\d+)*", value.replace(" ", "")):
        return value.replace(" ", "")
    raise ValueError(f"expected GPU indices like \"0,1\", 0 or [0, 1], got {value!r}")


class Spec:
    """The options of one command, in the order ``--help`` lists them."""

    def __init__(self, command: str, options: Sequence[Option]):
        self.command = command
        self.options = tuple(options)
        self._by_name = {o.name: o for o in self.options}
        if len(self._by_name) != len(self.options):
            raise ValueError(f"{command}: an option is declared twice")

    def __iter__(self) -> Iterator[Option]:
        return iter(self.options)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Option:
        return self._by_name[name]

    def names(self, *, cli_only: bool = False) -> list[str]:
        return [o.name for o in self.options if o.cli or not cli_only]

    def defaults(self) -> dict:
        return {o.name: o.default for o in self.options}

    @property
    def resumable(self) -> frozenset[str]:
        return frozenset(o.name for o in self.options if o.resumable)

    def click_options(self, *, only: Sequence[str] | None = None) -> Callable:
        """A decorator adding every command-line option (``only``: these names) to a click
        command, in declaration order."""
        chosen = [o for o in self.options if o.cli and (only is None or o.name in only)]

        def decorate(function):
            for option in reversed(chosen):
                function = option.click_option()(function)
            return function
        return decorate

    def from_cli(self, params: dict) -> dict:
        """Option values from a click command's parameters (the others are left out)."""
        return {o.name: o.from_cli(params[o.name]) for o in self.options if o.name in params}

    def check(self, values: dict) -> None:
        """:class:`OptionError` for the first value out of its bounds or choices."""
        for option in self.options:
            if option.name in values:
                option.check(values[option.name])

    def unknown(self, key: str, what: str = "option") -> str:
        """The message for a key this command does not know, with a "did you mean"."""
        known = self.names(cli_only=True)
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {what}{hint}; known: {', '.join(known)}"

    def words(self, values: dict, cwd: Path | None = None, *, changed_only: bool = False,
              only: Sequence[str] | None = None) -> list[str]:
        """Command-line words of ``values`` (``changed_only``: those that differ from the
        default; ``only``: these names)."""
        words: list[str] = []
        for option in self.options:
            if option.name not in values or (only is not None and option.name not in only):
                continue
            value = values[option.name]
            if changed_only and value == option.default:
                continue
            words += option.words(value, cwd)
        return words

    def record(self, values: dict) -> dict:
        """``values`` as args.json records them (every option, lists as JSON lists)."""
        return {o.name: o.to_json(values.get(o.name, o.default)) for o in self.options}
