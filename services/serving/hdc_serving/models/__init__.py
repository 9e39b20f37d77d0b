"""Demo models shipped with hdc serving; each is an ordinary DEEPaaS v2 module."""
