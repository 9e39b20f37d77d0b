"""The one error the ranking core raises for bad input (gRPC INVALID_ARGUMENT, HTTP 400)."""


class RankInputError(ValueError):
    """The request cannot be ranked as given; the message names the offending field."""
