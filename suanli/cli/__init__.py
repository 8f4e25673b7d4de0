"""The command-line interface (``suanli``)."""
