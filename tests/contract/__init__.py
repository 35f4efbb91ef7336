"""One contract suite per store protocol, run over every implementation."""
