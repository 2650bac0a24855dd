"""xpkit's library: one module per stage plus the shared records, I/O, store and runtime.

Nothing in this package prints or exits; the CLI in ``xpkit.cli`` does that.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xpkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"
