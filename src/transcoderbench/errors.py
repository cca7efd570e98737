"""The one error type users see: a mistake in their input, reported as one line with exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (a path, a flag, a file's contents).

    The CLI prints ``error: <message>`` on one line and exits with code 2, without a traceback.
    The message must name the file or flag at fault and say what to do.
    """

    exit_code = 2
