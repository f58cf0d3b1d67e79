"""Template.render's two loops (nothing overrides a getter / vars or extra do) give the same
text: request.vars override built-ins, extra overrides both, escaping follows the value."""

from __future__ import annotations

from meshkit.web.message import Request, Response
from meshkit.web.placeholders import Template


def test_overrides_and_escaping_in_both_loops() -> None:
    t = Template('{method} {user} {status} "{>UA}"', "-", escape=True)
    req = Request("GET", "/", "/")
    resp = Response(200)
    # no vars, no extra: the plain loop (UA absent: the empty value)
    assert t.render(req, resp) == 'GET - 200 "-"'
    # a var that overrides no built-in of the template: still the plain loop
    req.vars["user"] = 'a"b'
    assert t.render(req, resp) == 'GET a\\x22b 200 "-"'
    # a built-in overridden through vars (as request_id's directive does)
    req.vars["method"] = "r\n1"
    assert t.render(req, resp) == 'r\\x0A1 a\\x22b 200 "-"'
    # extra wins over both, escaped too, also for a name whose own values need no escaping
    assert t.render(req, resp, extra={"status": "x\ty", "method": "M"}) == 'M a\\x22b x\\x09y "-"'
