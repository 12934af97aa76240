"""Errors a user can cause and fix. The CLI prints them as one line and exits with code 2.

One type per kind of mistake:

* :class:`LeWorldError`: a file, a folder or a model that is missing or not what was expected.
* :class:`DatasetError`: the same for a dataset.
* :class:`ArgumentError`: a value passed to a function, an env or a command that is out of range or
  of the wrong kind. It is also a ``ValueError``, as Gymnasium and numpy users expect of a bad argument.
"""


class LeWorldError(Exception):
    """A problem with the user's input: a file, a field or a value, and what was expected.

    The message is one line (the CLI prints it as one): whitespace runs, newlines included, become
    one space, so the text of a foreign error it quotes (YAML's, torch's) cannot break it.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(" ".join(str(message).split()), *args)


def brief(err: BaseException, limit: int = 200) -> str:
    """A foreign exception's message, short, for a :class:`LeWorldError` to quote."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DatasetError(LeWorldError):
    """A dataset that is missing, truncated, corrupt, or not a LeWorld PushT dataset."""


class ArgumentError(LeWorldError, ValueError):
    """A bad argument value: it names the argument, the value and what was expected."""
