"""Readers of the offline sources of the demo data set (``lamra data demo``): OpenClipart SVGs,
Fashion-MNIST idx files and WordNet's data files, as Debian packages install them."""
