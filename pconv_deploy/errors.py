"""The one exception type the CLI turns into a one-line message (no traceback), and its helper."""


class PConvError(Exception):
    """A user-facing failure: the message names the file or option and the problem."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none): for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
