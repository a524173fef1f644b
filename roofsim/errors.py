"""Errors meant for users: one line, naming the bad input and the fix. The CLI prints them and exits 2."""


class UserError(Exception):
    """A mistake in what the user asked for (bad name, bad size, bad spec file, a plan that does not fit).

    Bugs raise ordinary exceptions; only UserError is turned into a one-line message.
    """
