"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""


class UserError(Exception):
    """A mistake the user can fix (bad name, bad value, missing or corrupt file). Message is one line."""
