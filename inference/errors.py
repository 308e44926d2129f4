"""Errors with messages a user can act on."""


class ModelLoadError(Exception):
    """A model could not be resolved, read or built; the message says what and how to fix it."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
