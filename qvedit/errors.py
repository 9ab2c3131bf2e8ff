"""The one exception type users see as a one-line message instead of a traceback."""


class QveditError(Exception):
    """A problem the user can fix: the message names it and says how.

    ``python -m qvedit`` prints it as ``qvedit: error: <message>`` and exits with code 2.
    """
