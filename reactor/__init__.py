"""at-rund: the firehose reactor daemon."""
__version__ = "0.1.0"
