"""The one exception type a user ever sees: a problem with their input, said in one line."""


class LotteryError(Exception):
    """A user-facing error: bad configuration, missing data, a corrupt file.

    The entry point prints it as a single line (no stack trace) and exits with status 2.
    """
