"""Errors as the user sees them: one line."""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """``Type: first line of the message`` — what a log line or status.json records of an exception."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
