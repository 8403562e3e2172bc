"""Errors that peerlearn reports to the user as a message, never as a traceback."""


class PeerlearnError(Exception):
    """Base class: the CLI prints the message and exits with ``exit_code``."""

    exit_code = 1


class ConfigError(PeerlearnError):
    """A config key, value or override is wrong. Raised before anything trains."""

    exit_code = 2


class DataError(PeerlearnError):
    """A dataset is missing, corrupted or does not fit the config."""

    exit_code = 2


class TrainingError(PeerlearnError):
    """Training cannot go on (e.g. a non-finite loss); names the last good checkpoint."""

    exit_code = 3


class ResourceError(PeerlearnError):
    """The machine cannot hold the run: an unwritable folder, a full disk, a run dir locked by another process."""

    exit_code = 4


class DistributedError(PeerlearnError):
    """A process of a distributed run died or stopped answering; the others stop within engine.dist_timeout."""

    exit_code = 5


class Preempted(PeerlearnError):
    """SIGTERM or SIGINT arrived: a checkpoint was saved at the next step boundary and the run stopped.

    The exit code is the shell's convention for a death by that signal, 128 + signal number:
    130 for SIGINT (Ctrl-C), 143 for SIGTERM (what schedulers send before they take a machine).
    """

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + int(signal_number)
