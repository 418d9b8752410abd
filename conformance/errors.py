"""The error every command reports the same way: its one-line message on stderr, exit 2.

Here, below every room, so that a tool raises it without importing the command line."""


class UsageError(Exception):
    """Bad arguments or surroundings (an option's value, an output directory in use, no QEMU
    found); the message is one line."""
