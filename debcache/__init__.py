"""debcache: a caching proxy for Debian archives that records, freezes and pins installs."""

__version__ = "0.1.0"
