"""Errors caused by user input: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input (unknown task, missing or malformed file, unusable model)."""
