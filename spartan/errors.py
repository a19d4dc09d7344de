"""Errors that name the field they are about.

``FieldError`` carries its location as data: ``loc`` is the path of the field inside the
document it was found in (a job spec or a plan request: ``("cost_model", "params", "table")``),
``msg`` says what is wrong. The API answers it as a 4xx whose ``loc`` is ``["body", *loc]``
(``api/errors.py``); the CLI prints ``str(error)``, ``"cost_model.params.table: msg"``. Nothing
reads a location back out of a message.
"""

from __future__ import annotations

from collections.abc import Sequence

Loc = tuple[str | int, ...]


class FieldError(ValueError):
    """A value that cannot be used, at ``loc``.

    Args:
        loc: the field's path, e.g. ``("model", "name")``; empty for the document as a whole.
        msg: what is wrong, for a person (without the field's name in front).
    """

    def __init__(self, loc: Sequence[str | int], msg: str) -> None:
        self.loc: Loc = tuple(loc)
        self.msg = msg
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{dotted(self.loc)}: {self.msg}" if self.loc else self.msg

    def __reduce__(self) -> tuple[type[FieldError], tuple[Loc, str]]:
        return type(self), (self.loc, self.msg)


class UnknownReference(FieldError):
    """A field naming something that does not exist for this owner (an upload id): a 404."""


def dotted(loc: Sequence[str | int]) -> str:
    """``("cost_model", "params", "table")`` as ``"cost_model.params.table"``."""
    return ".".join(str(part) for part in loc)


def core_reason(exc: ValueError, tag: str) -> str:
    """The message of a core ``ValueError`` without the tag it starts with by convention.

    ``spartan_core`` and ``cost_models`` begin their messages with the name of the argument
    they reject (``"block_shape: 5x5 blocks do not tile ..."``). The caller knows which
    argument it passed and so which tag to drop; the location comes from the caller, never
    from the message.
    """
    return str(exc).removeprefix(f"{tag}: ")
