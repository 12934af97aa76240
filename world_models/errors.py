"""Errors a user can cause and fix. The CLI prints them as one line and exits with code 2.

One type per kind of mistake:

* :class:`LeWorldError`: a file, a folder or a model that is missing or not what was expected.
* :class:`DatasetError`: the same for a dataset.
* :class:`ArgumentError`: a value passed to a function, an env or a command that is out of range or
  of the wrong kind. It is also a ``ValueError``, as Gymnasium and numpy users expect of a bad argument.
"""


class LeWorldError(Exception):
    """A problem with the user's input: a file, a field or a value, and what was expected."""


class DatasetError(LeWorldError):
    """A dataset that is missing, truncated, corrupt, or not a LeWorld PushT dataset."""


class ArgumentError(LeWorldError, ValueError):
    """A bad argument value: it names the argument, the value and what was expected."""
