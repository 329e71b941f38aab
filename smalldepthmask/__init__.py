"""smalldepthmask: multiplex foregrounds over backgrounds into (image, mask, depth) training triplets."""

__version__ = "0.1.0"
