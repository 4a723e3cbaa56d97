"""The network, one file per paper component."""
