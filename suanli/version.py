"""The package version, in a module of its own: the CLI's start-up and the caches' keys read it without
loading the package's lazy attributes."""

__version__ = "0.2.0"
