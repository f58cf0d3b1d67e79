"""request_id [HEADER]: a request ID for {request_id} (Caddy v1).

Every request gets a new UUID (version 4) as {request_id}, set before the other handlers run
(the log line, a header rule and the proxy's header_upstream all see the same one). With
HEADER, a request that carries a UUID in that header keeps it (written in the canonical
lower-case form); a value that is no UUID is replaced by a new one, as v1 did. Without the
directive {request_id} still works: it is made the first time something asks for it.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass

from meshkit.web.caddyfile.tokens import Dispenser
from meshkit.web.directives import register
from meshkit.web.message import Handler, HandlerResult, Request
from meshkit.web.site import Site

log = logging.getLogger("meshkit.web")

# The spellings Go's uuid.Parse reads: canonical, {canonical}, urn:uuid:canonical, 32 hex.
_HEX = "[0-9a-fA-F]"
_CANON = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
_UUID = re.compile(rf"(?:{_CANON}|\{{{_CANON}\}}|(?i:urn:uuid:){_CANON}|{_HEX}{{32}})")


@dataclass
class RequestIDConfig:
    header: str = ""  # the request header that may carry an ID already; "" for none


def parse(d: Dispenser, site: Site) -> RequestIDConfig:
    config = RequestIDConfig()
    while d.next():
        if d.next_arg():
            config.header = d.val()
        if d.next_arg():
            raise d.arg_err()
        for _ in d.block():
            raise d.err("request_id takes no block")
    return config


def parse_uuid(text: str) -> str | None:
    """The canonical form of a UUID written the ways Go's uuid.Parse accepts, else None."""
    text = text.strip()
    if not _UUID.fullmatch(text):
        return None
    if len(text) == 45:  # urn:uuid: in any case
        text = text[9:]
    return str(uuid.UUID(text))


def build(config: RequestIDConfig, next: Handler, site: Site) -> Handler:
    header = config.header

    def request_id_handler(request: Request) -> HandlerResult:
        rid = None
        if header:
            given = request.headers.get(header)
            if given:
                rid = parse_uuid(given)
                if rid is None:
                    log.info(
                        "request ID in %s is no UUID: %.64r (a new one is used)", header, given
                    )
        request.vars["request_id"] = rid or str(uuid.uuid4())
        return next(request)

    return request_id_handler


register("request_id", parse, build)
