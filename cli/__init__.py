"""The ``spartan`` command line (``cli.main:app``): the layer that wires everything together."""
