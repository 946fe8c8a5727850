"""lamra's version: in the package, the server's API description and every index manifest."""

__version__ = "0.1.0"
