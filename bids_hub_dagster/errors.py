"""The root of the project's user errors.

A :class:`UserError` is an error in the user's input — a BIDS file, the spec, the
destination, a setting — whose message names the file or key and says what to do. A
retry fails the same way, so the assets fail without one (``defs.outcomes.user_failure``)
and the CLI prints the message and exits 2, without a traceback. Any other exception is
a bug or a passing fault (a full disk, a network outage): the assets let it propagate,
so Dagster shows its traceback and the retry policy may try again.

    UserError
    ├── BidsError               bids/errors.py: the BIDS folder cannot be indexed as asked
    │   └── AmbiguousColumnError
    ├── SpecError               spec.py: the spec file is malformed or contradicts itself
    ├── ConfigError             here: an environment variable or option has a bad value
    ├── NiftiFileError          dataset/nifti.py: a file cannot go into a NIfTI column
    ├── ShardFilesError         dataset/shards.py: files of one shard cannot be embedded
    ├── ShardPlanError          dataset/shards.py: a shard that the current plan does not have
    ├── DestinationError        publish/destinations.py: cannot publish there
    │   └── HubAccessError      publish/hub: a permanent Hub refusal (token, rights, repo)
    ├── ManifestError           publish/manifest.py: a destination's manifest cannot be read
    ├── DemoFolderError         demo.py: the demo would replace files it did not write
    └── ShardsNotReadyError     publish/publication.py: shards missing or built from other data
"""

from __future__ import annotations


class UserError(Exception):
    """An error in the user's input: the message names the file or key and what to do."""


class ConfigError(UserError):
    """A setting (an environment variable, an option) has a value that cannot be used."""
