"""One exception type for bad user input: the CLI prints it as one `error: ...` line, exit 2."""


class VQFlowError(Exception):
    """Bad input or usage (a missing folder, an unreadable file, an unknown key...).

    The message names the file or key and says what to do; the CLI prints it on one line
    and exits with status 2 (a traceback only with --debug).
    """
