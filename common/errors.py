"""The one exception type that means "the user's input is wrong" rather than "the code is wrong"."""


class UserError(Exception):
    """Bad input (missing checkpoint, wrong layer, offline hub...): the CLI prints it as one line and exits 2."""
