"""A sans-IO interpreter of Go's `text/template` language (Caddy v1's template syntax).

    t = Template("page.html", funcs={...}, left="{{", right="}}").parse(text)
    html = t.execute(data)     # TemplateError: "template: page.html:3:5: executing ..."

lexer -> parser (nodes) -> exec, with the builtin functions in funcs and Go's fmt in gofmt.
"""

from meshkit.web.gotemplate.exec import Limits, Template
from meshkit.web.gotemplate.funcs import FuncError, html_escape_string, truth
from meshkit.web.gotemplate.gofmt import NO_VALUE, go_str
from meshkit.web.gotemplate.parser import TemplateError

__all__ = [
    "NO_VALUE",
    "FuncError",
    "Limits",
    "Template",
    "TemplateError",
    "go_str",
    "html_escape_string",
    "truth",
]
