"""The command line: parsing and wiring."""
