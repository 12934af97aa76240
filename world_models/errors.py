"""Errors a user can cause and fix. The CLI prints them as one line and exits with code 2."""


class LeWorldError(Exception):
    """A problem with the user's input: a file, a field or a value, and what was expected."""


class DatasetError(LeWorldError):
    """A dataset that is missing, truncated, corrupt, or not a LeWorld PushT dataset."""
