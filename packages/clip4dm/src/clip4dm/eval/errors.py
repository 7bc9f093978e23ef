"""Errors of an evaluation run that the user can fix; reported in one line, without a traceback."""

from __future__ import annotations


class EvalError(Exception):
    """A run cannot start or finish as asked (bad options, unusable output directory, no model)."""


class DataError(EvalError, ValueError):
    """A data file as a whole cannot be used (missing, not JSON, wrong layout); names the file.

    A single malformed record is not a `DataError`: it becomes an error row of the run.
    """
