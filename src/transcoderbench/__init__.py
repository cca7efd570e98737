"""transcoderbench: train and evaluate transcoders at their own sites, in one streaming pass."""

__version__ = "0.1.0"
