"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""


class BisrError(Exception):
    """A user-facing error: bad input, bad file, missing toolchain. Its text is the whole message."""
