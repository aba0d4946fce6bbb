"""msgprof: a reproducible profiler for a ZeroMQ message-processing server."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("msgprof")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
