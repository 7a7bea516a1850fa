"""User-facing errors.

A :class:`TwinError` is a problem with the user's input (a bad file, key, option or rank) and is
reported by the CLI as one line naming the culprit, with exit status 2. Anything else is a bug and
keeps its traceback.
"""


class TwinError(Exception):
    """An error caused by user input; the message names the bad file, key, option or rank."""


class DatasetError(TwinError):
    """A dataset directory, manifest or shard is missing, malformed or corrupt."""


class IngestError(TwinError):
    """A source for ``twinhpc ingest`` cannot be converted."""
