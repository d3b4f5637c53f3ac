"""One exception type for bad user input: the CLI prints it as one `error: ...` line, exit 2."""

from __future__ import annotations

import re

# torch's DataLoader re-raises a worker's exception as `type(msg)`, where msg is this header
# followed by the worker's whole formatted traceback (torch/_utils.py, ExceptionWrapper.reraise).
_WORKER_HEADER = re.compile(r"\ACaught (?P<type>\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def worker_original_message(text: str) -> str | None:
    """The message of the exception a DataLoader worker raised, recovered from the traceback
    text torch wraps it in; None when `text` is no such wrapper."""
    header = _WORKER_HEADER.match(text)
    if header is None:
        return None
    name = re.escape(header.group("type"))
    # The traceback ends with "module.Name: message" (builtins without the module); the last
    # such line starts the worker's own exception (earlier ones belong to its causes).
    starts = list(re.finditer(rf"^(?:[\w.]+\.)?{name}(?::[ ]?|$)", text, flags=re.MULTILINE))
    return text[starts[-1].end() :].strip() if starts else None


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type name), cut to `limit` characters:
    what a one-line error can quote of a library's multi-line message (a DataLoader worker's
    wrapped exception quotes the worker's own message, not torch's header)."""
    text = str(exc).strip()
    text = worker_original_message(text) or text
    return (text.splitlines() or [type(exc).__name__])[0][:limit]


class VQFlowError(Exception):
    """Bad input or usage (a missing folder, an unreadable file, an unknown key...).

    The message names the file or key and says what to do; the CLI prints it on one line
    and exits with status 2 (a traceback only with --debug).
    """

    def __init__(self, *args: object) -> None:
        # Raised in a DataLoader worker, the error comes back re-created from torch's message
        # (a header plus three tracebacks): keep only the message the worker's error had.
        if len(args) == 1 and isinstance(args[0], str):
            original = worker_original_message(args[0])
            if original:
                args = (original,)
        super().__init__(*args)
