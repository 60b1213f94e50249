"""The errors of the private brokers: :class:`BrokerError` and its two kinds."""

from __future__ import annotations


class BrokerError(RuntimeError):
    """A private broker could not be started, stopped or managed."""


class BrokerStartError(BrokerError):
    """The broker did not start; the message ends with the tail of its logs."""


class BrokerCtlError(BrokerError):
    """``rabbitmqctl`` exited with a non-zero code; the message holds its output."""

    def __init__(self, message: str, returncode: int, output: str) -> None:
        super().__init__(message)
        #: The exit code of rabbitmqctl.
        self.returncode = returncode
        #: What rabbitmqctl printed (stdout and stderr).
        self.output = output
