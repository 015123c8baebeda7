"""presenced: a SIP presence server and library."""

__version__ = "0.1.0"
