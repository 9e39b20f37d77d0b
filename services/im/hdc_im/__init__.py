"""hdc infrastructure manager: TOSCA topologies into real resources, IM-compatible API."""

__version__ = "0.1.0"
# The grycap IM version whose REST contract this service speaks (GET /version).
IM_COMPAT_VERSION = "1.17.0"
