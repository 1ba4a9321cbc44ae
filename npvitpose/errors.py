"""The one exception type users see: its message is a single line saying what is wrong."""


class NpvitposeError(Exception):
    """Bad input, a bad checkpoint or a bad model file; the CLI prints `error: <message>` and exits 1."""
