"""The package's version; write_exchange stores it in every file as the root attribute `writer`."""

__version__ = "0.2.0"
NAME = "sddit_oracle"
