"""The ``cpcnn`` command line: parsing and printing only; work happens in the library."""
