"""One exception type for bad user input: the CLI prints it as one `error: ...` line, exit 2."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type name), cut to `limit` characters:
    what a one-line error can quote of a library's multi-line message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


class VQFlowError(Exception):
    """Bad input or usage (a missing folder, an unreadable file, an unknown key...).

    The message names the file or key and says what to do; the CLI prints it on one line
    and exits with status 2 (a traceback only with --debug).
    """
