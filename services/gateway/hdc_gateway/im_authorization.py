"""The access token inside an IM-style `Authorization` header.

grycap's im-client sends one header for everything: credential lines joined by the two
characters backslash-n, each line `key = value` pairs split by `;`. The caller's OIDC token is
the `token` of the `type = InfrastructureManager` line; the other lines are cloud credentials
that the infrastructure manager needs and the gateway passes on untouched. A route configured
with `token_from: im_authorization` takes its token from there (or from a plain Bearer header).
"""

from __future__ import annotations

LINE_SEPARATORS = ("\\n", "\n")


def im_token(authorization: bytes) -> str | None:
    """The InfrastructureManager line's token, or None when the header carries none."""
    text = authorization.decode("utf-8", "replace")
    for sep in LINE_SEPARATORS[1:]:
        text = text.replace(sep, LINE_SEPARATORS[0])
    for line in text.split(LINE_SEPARATORS[0]):
        fields: dict[str, str] = {}
        for pair in line.split(";"):
            key, eq, value = pair.partition("=")
            if eq:
                fields[key.strip().lower()] = value.strip().strip("'\"")
        if fields.get("type", "").lower() == "infrastructuremanager":
            return fields.get("token") or None
    return None
