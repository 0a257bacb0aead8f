"""Settings from defaults, the environment and the command line: one rule for every app.

The engine (:class:`~pipecat_vibevoice.engine.TTSConfig`), the TTS API
(:class:`~pipecat_vibevoice.serving.ServingSettings`), the conversation
(:class:`~pipecat_vibevoice.pipeline.BotConfig`) and the bot server
(:class:`~pipecat_vibevoice.bot.ServerSettings`) are dataclasses on :class:`EnvSettings`.
Each field can be set three ways, in rising priority:

1. its dataclass default;
2. the environment variable ``<ENV_PREFIX><FIELD>`` (upper case); an empty value counts
   as unset, so ``FOO=`` in a compose file never overrides a default with "";
3. the flag ``--<FLAG_PREFIX><field-with-dashes>``.

Values are parsed by the field's type (``bool`` takes 1/0, true/false, yes/no, on/off;
a ``Literal`` gives the flag its choices; ``str | int`` takes digits as an int), and the
class validates itself in ``__post_init__``, so a bad value stops the program at start-up
with a message that names it. Field metadata: ``help`` (the flag's help), ``cli`` (False
keeps a field off the command line, e.g. secrets, which belong in the environment).
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, fields, is_dataclass
from typing import Any, ClassVar, Literal, TypeVar

S = TypeVar("S", bound="EnvSettings")


class SettingsError(ValueError):
    """A setting is invalid; the message names the variable, flag or field."""


def parse_bool(raw: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); anything else is a ValueError."""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _str_or_int(raw: str) -> str | int:
    stripped = raw.strip()
    return int(stripped) if stripped.isdigit() else raw


def _parts(annotation: Any) -> tuple[Any, ...]:
    """The members of a union (``X | None`` → (X, NoneType)), or the type itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def value_parser(annotation: Any) -> tuple[Callable[[str], Any], tuple[str, ...] | None]:
    """The parser for a field's (resolved) type annotation, and its choices if a Literal."""
    members = [t for t in _parts(annotation) if t is not type(None)]
    if len(members) == 1 and typing.get_origin(members[0]) is Literal:
        choices = tuple(str(c) for c in typing.get_args(members[0]))
        return str, choices
    if set(members) == {str, int}:
        return _str_or_int, None
    kind = members[0] if members else str
    if kind is bool:
        return parse_bool, None
    if kind is int:
        return lambda raw: int(raw.strip()), None
    if kind is float:
        return lambda raw: float(raw.strip()), None
    return str, None


@dataclass
class EnvSettings:
    """Base of every settings dataclass; see the module docstring for the rules.

    Subclasses set :attr:`ENV_PREFIX`, :attr:`FLAG_PREFIX` and :attr:`GROUP` (the title
    of their flags in ``--help``). Fields whose type is another dataclass (nested
    settings) are not read here; their owner builds them.
    """

    ENV_PREFIX: ClassVar[str] = "PIPECAT_VIBEVOICE_"
    FLAG_PREFIX: ClassVar[str] = ""
    GROUP: ClassVar[str] = "settings"
    #: What a bad environment value raises (a subclass names its own error).
    ERROR: ClassVar[type[ValueError]] = SettingsError

    # -- the fields this base reads ---------------------------------------------------------

    @classmethod
    def _fields(cls) -> list[tuple[Field, Any]]:
        hints = typing.get_type_hints(cls)
        return [(f, hints[f.name]) for f in fields(cls) if f.init and not _is_nested(hints[f.name])]

    @classmethod
    def env_name(cls, name: str) -> str:
        """The environment variable of field ``name``."""
        return cls.ENV_PREFIX + name.upper()

    @classmethod
    def flag_name(cls, name: str) -> str:
        """The command-line flag of field ``name``."""
        return "--" + cls.FLAG_PREFIX + name.replace("_", "-")

    @classmethod
    def _dest(cls, name: str) -> str:
        return f"{cls.__name__}.{name}"

    # -- environment --------------------------------------------------------------------------

    @classmethod
    def from_env(cls: type[S], environ: Mapping[str, str] | None = None, **overrides: Any) -> S:
        """Defaults, then the environment, then ``overrides`` (``None`` ones are ignored)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f, annotation in cls._fields():
            variable = cls.env_name(f.name)
            raw = environ.get(variable)
            if raw is None or raw.strip() == "":
                continue
            parse, choices = value_parser(annotation)
            try:
                value = parse(raw)
            except ValueError:
                raise cls.ERROR(
                    f"{variable}={raw!r} is not a valid {_type_name(annotation)}"
                ) from None
            if choices is not None and value not in choices:
                raise cls.ERROR(f"{variable}={raw!r} must be one of {', '.join(choices)}")
            values[f.name] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    # -- command line -------------------------------------------------------------------------

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field; unset flags fall back to the environment, then the default."""
        group = parser.add_argument_group(
            cls.GROUP, f"(each also read from {cls.ENV_PREFIX}<NAME>)"
        )
        for f, annotation in cls._fields():
            if not f.metadata.get("cli", True):
                continue
            parse, choices = value_parser(annotation)
            default = _default_of(f)
            shown = "" if default in (None, "") else f" (default: {default})"
            kwargs: dict[str, Any] = {
                "dest": cls._dest(f.name),
                "metavar": f.name.upper(),
                "default": None,
                "help": f.metadata.get("help", "") + shown,
            }
            if parse is parse_bool:
                kwargs["action"] = argparse.BooleanOptionalAction
                del kwargs["metavar"]
            else:
                kwargs["type"] = parse
                if choices is not None:
                    kwargs["choices"] = choices
                    del kwargs["metavar"]
            group.add_argument(cls.flag_name(f.name), **kwargs)

    @classmethod
    def from_args(
        cls: type[S],
        args: argparse.Namespace,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> S:
        """The environment first, then the flags that were given, then ``overrides``."""
        given = {
            f.name: getattr(args, cls._dest(f.name), None)
            for f, _ in cls._fields()
            if getattr(args, cls._dest(f.name), None) is not None
        }
        return cls.from_env(environ, **given, **overrides)


def _is_nested(annotation: Any) -> bool:
    return any(isinstance(t, type) and is_dataclass(t) for t in _parts(annotation))


def _default_of(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _type_name(annotation: Any) -> str:
    members = [t for t in _parts(annotation) if t is not type(None)]
    return getattr(members[0], "__name__", str(members[0])) if members else "value"
