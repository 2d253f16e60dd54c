"""The one exception type the command line turns into a one-line message and exit status 2."""


class UserError(Exception):
    """Bad input a user can fix: a file, a field, a flag. The message names what was found and expected."""
