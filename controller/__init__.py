"""swapvisor's controller: policy (config, scheduling, upstream lifecycle, HTTP)."""

__version__ = "0.1.0"
