"""The command line: ``swapvisor`` serves; ``swapvisor check`` and
``swapvisor schema`` describe a config."""
