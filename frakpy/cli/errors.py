"""Errors the CLI reports itself (bad input, nothing matched), as opposed to CRI call failures."""

from __future__ import annotations


class CLIError(Exception):
    """Printed as ``frakpy: <message>``; exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
