"""The project's own error types share one base, so that the command line knows them.

A :class:`QsegmentError` means bad input or an impossible request: the CLI prints its
message (which names the file or option and says what to do) and exits with code 2.
Any other exception is a bug, and its traceback is shown.
"""


class QsegmentError(Exception):
    """Base of every error whose message is meant for the user."""


class UsageError(QsegmentError, ValueError):
    """A bad argument or option value, or options that do not go together."""


class CheckpointError(QsegmentError, ValueError):
    """A checkpoint that cannot be read or does not fit the model; names the file."""
