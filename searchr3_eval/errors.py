"""Errors caused by user input: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input (unknown task, missing or malformed file, unusable model). Its message is one line, even where it
    quotes a library's message that spans several."""

    def __str__(self) -> str:
        return " ".join(super().__str__().split())
