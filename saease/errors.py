"""The one exception type the command line turns into a one-line error."""


class SaeaseError(Exception):
    """Bad input or an unrecoverable condition, worded for the user.

    The message names the offending input and what would be accepted; the CLI prints it
    as a single line and exits non-zero.
    """
