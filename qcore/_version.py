"""qcore's version, read from the installed distribution's metadata (setup.py is the one place it is written)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qcore")
except PackageNotFoundError:  # a source tree on sys.path without `pip install -e .`
    __version__ = "0+unknown"
