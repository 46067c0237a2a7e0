"""The one exception type the command line turns into a one-line message and exit code 2."""


class PrimeSVTError(Exception):
    """A user-facing error: the message names what is wrong and what to do about it."""
