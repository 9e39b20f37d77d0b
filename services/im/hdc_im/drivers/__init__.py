"""Drivers: one interface (base.Driver), one module per kind of site."""
