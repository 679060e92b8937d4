"""The one exception type the CLI turns into a one-line message (no traceback), and its helper."""


class PConvError(Exception):
    """A user-facing failure: the message names the file or option and the problem."""

    exit_code = 1  # what the CLI exits with


class UsageError(PConvError):
    """A bad option or argument, found before anything ran: exit 2, like typer's own usage errors."""

    exit_code = 2


class JobStopped(PConvError):
    """A failure no later file can escape (e.g. every Triton server is down): the folder job stops, writing
    nothing more, instead of failing the files one by one."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none): for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
