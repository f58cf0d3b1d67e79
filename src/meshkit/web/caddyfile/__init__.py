"""The Caddyfile (v1 grammar): lexer, parser, site addresses, and loading into Sites.

    tokens.py   Token, CaddyfileError, Dispenser (what directives read their arguments with)
    lexer.py    text -> tokens; quoting tokens back
    parser.py   tokens -> server blocks; snippets, imports, {$ENV}
    address.py  `[scheme://]host[:port][/path]` -> Address
    load.py     text / file / command-line lines -> Sites with every directive parsed

load.py is not imported here (it imports the directive registry, which imports tokens.py).
"""

from meshkit.web.caddyfile.address import AddressError, parse_address
from meshkit.web.caddyfile.lexer import lex
from meshkit.web.caddyfile.parser import ParseResult, ServerBlock, parse_text
from meshkit.web.caddyfile.tokens import CaddyfileError, Dispenser, Token

__all__ = [
    "AddressError",
    "CaddyfileError",
    "Dispenser",
    "ParseResult",
    "ServerBlock",
    "Token",
    "lex",
    "parse_address",
    "parse_text",
]
