"""jasmine: JAX world models in the Genie family."""

__version__ = "0.1.0"
