"""v1 setup cases of the process-event directives: on (onevent/on_test.go), startup and
shutdown (startupshutdown/startupshutdown_test.go; `#name` is the subtest's name).

v1's tests run the command `cmd`, which v1 looked up only when the event came. meshkit looks
the command up when it reads the Caddyfile, so a typo is an error at file:line rather than a
failed hook at startup: each accepted input is ported twice, verbatim (a documented
difference: `cmd` is not on PATH) and with `true` for `cmd` (accepted, with v1's checks)."""

from __future__ import annotations

from support.caddy_v1 import Case, Check, _eq

NO_CMD = (
    "meshkit looks the command up on PATH when it reads the Caddyfile (v1 only when the event"
    " came), and there is no `cmd`"
)


def _commands(key: str, *want: tuple[str, tuple[str, ...], bool]) -> Check:
    """(event, argv, background) per command; v1 kept a last `&` among the args and ran the
    command in the background for it: meshkit's background flag."""
    return lambda d: _eq([(c.event, c.argv, c.background) for c in d[key].commands], list(want))


ON = [
    Case("on TestSetup#noInput", "on", False),
    Case("on TestSetup#nonExistent", "on xyz cmd arg", False),
    Case("on TestSetup#startup", "on startup cmd arg", True, diff=NO_CMD),
    Case("on TestSetup#shutdown", "on shutdown cmd arg &", True, diff=NO_CMD),
    Case("on TestSetup#certrenew", "on certrenew cmd arg", True, diff=NO_CMD),
    Case("on TestCommandParse#noInput", "on", False),
    Case("on TestCommandParse#nonExistent", "on xyz cmd arg", False),
    Case("on TestCommandParse#startup", "on startup cmd arg1 arg2", True, diff=NO_CMD),
    Case("on TestCommandParse#shutdown", "on shutdown cmd arg1 arg2 &", True, diff=NO_CMD),
    Case("on TestCommandParse#certrenew", "on certrenew cmd arg1 arg2", True, diff=NO_CMD),
    Case(
        "on TestCommandParse#startup (true for cmd)",
        "on startup true arg1 arg2",
        True,
        _commands("on", ("startup", ("true", "arg1", "arg2"), False)),
    ),
    Case(
        "on TestCommandParse#shutdown (true for cmd)",
        "on shutdown true arg1 arg2 &",
        True,
        _commands("on", ("shutdown", ("true", "arg1", "arg2"), True)),
    ),
    Case(
        "on TestCommandParse#certrenew (true for cmd)",
        "on certrenew true arg1 arg2",
        True,
        _commands("on", ("certrenew", ("true", "arg1", "arg2"), False)),
    ),
]

STARTUP = [
    Case("startup TestStartup#noInput", "startup", False),
    Case("startup TestStartup#startup", "startup cmd arg", True, diff=NO_CMD),
    Case(
        "startup TestStartup#startup (true for cmd)",
        "startup true arg",
        True,
        _commands("startup", ("startup", ("true", "arg"), False)),
    ),
]

SHUTDOWN = [
    Case("shutdown TestShutdown#noInput", "shutdown", False),
    Case("shutdown TestShutdown#shutdown", "shutdown cmd arg", True, diff=NO_CMD),
    Case(
        "shutdown TestShutdown#shutdown (true for cmd)",
        "shutdown true arg",
        True,
        _commands("shutdown", ("shutdown", ("true", "arg"), False)),
    ),
]
