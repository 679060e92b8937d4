"""The one exception type the CLI turns into a one-line message (no traceback)."""


class PConvError(Exception):
    """A user-facing failure: the message names the file or option and the problem."""
