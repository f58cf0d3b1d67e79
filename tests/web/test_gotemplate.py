"""The Go text/template interpreter against Go's documented semantics (cases in the style of
Go's text/template exec_test.go and parse_test.go: template, data, expected output)."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.web.gotemplate import Limits, Template, TemplateError


class T:
    """A struct-like value: exported fields and methods, as Go's exec tests use."""

    True_ = True
    I = 17  # noqa: E741 - the name of Go's test field
    U16 = 16
    X = "x"
    FloatZero = 0.0
    SI = (3, 4, 5)
    SIEmpty: tuple[int, ...] = ()
    MSI = {"one": 1, "two": 2, "three": 3}
    MSIEmpty: dict[str, int] = {}
    Empty = None
    Str = "foo"
    NilPtr = None
    BinaryFunc = staticmethod(lambda a, b: f"[{a}={b}]")

    def Method0(self) -> str:
        return "M0"

    def Method1(self, a: int) -> int:
        return a

    def Method2(self, a: int, b: str) -> str:
        return f"Method2: {a} {b}"

    def MAdd(self, a: int, b: list[int]) -> list[int]:
        return [a + x for x in b]

    def MyError(self, fail: bool) -> bool:
        if fail:
            raise ValueError("myError")
        return True

    def Copy(self) -> T:
        return self


TVAL = T()
TVAL.Inst = None  # type: ignore[attr-defined]


def run(src: str, data: Any = TVAL, funcs: dict[str, Any] | None = None, **kw: Any) -> str:
    return Template("test", funcs=funcs, **kw).parse(src).execute(data)


EXEC_CASES = [
    # text, dot, fields
    ("empty", "", ""),
    ("text", "some text", "some text"),
    (".X", "-{{.X}}-", "-x-"),
    (".U16", "{{.U16}}", "16"),
    ("nested method", "{{.Copy.X}}", "x"),
    ("$ int", "{{$}}", None),  # replaced below with the data repr
    ("map .one", "{{.MSI.one}}", "1"),
    ("map missing key", "{{.MSI.nope}}", "<no value>"),
    ("map empty", "{{.MSIEmpty}}", "map[]"),
    ("map print", "{{.MSI}}", "map[one:1 three:3 two:2]"),
    ("slice print", "{{.SI}}", "[3 4 5]"),
    ("nil field", "{{.Empty}}", "<nil>"),
    ("nil instance field", "{{.Copy.Inst}}", "<nil>"),
    # methods
    (".Method0", "-{{.Method0}}-", "-M0-"),
    (".Method1(1234)", "-{{.Method1 1234}}-", "-1234-"),
    (".Method1(.I)", "-{{.Method1 .I}}-", "-17-"),
    (".Method2(3, .X)", "-{{.Method2 3 .X}}-", "-Method2: 3 x-"),
    ("method on var", "{{$x := .}}{{$x.Method2 1 .X}}", "Method2: 1 x"),
    ("method piped", "{{.X | .Method2 .U16}}", "Method2: 16 x"),
    ("method chained", "{{(.Copy).Method0}}", "M0"),
    # variables
    ("$ int field", "{{$.I}}", "17"),
    ("declare in action", "{{$x := 2}}{{$x}}", "2"),
    ("assign", "{{$x := 1}}{{$x = 2}}{{$x}}", "2"),
    ("assign in if", "{{$x := 1}}{{if true}}{{$x = 3}}{{end}}{{$x}}", "3"),
    ("shadow in with", "{{$x := 1}}{{with $x := 2}}{{$x}}{{end}}{{$x}}", "21"),
    ("$ in range", "{{range .SI}}{{$.I}}{{end}}", "171717"),
    # pipelines and parens
    ("pipeline", "{{.Method0 | printf}}", "M0"),
    ("pipeline func", '-{{"output" | printf "%s"}}-', "-output-"),
    ("parens", '{{(1)}} {{(printf "%d" 2)}}', "1 2"),
    ("parens in pipeline", '{{printf "%d %d" (len "ab") 3}}', "2 3"),
    ("parenthesized field", "{{(.MSI).one}}", "1"),
    # if / else
    ("if true", "{{if true}}TRUE{{end}}", "TRUE"),
    ("if false", "{{if false}}TRUE{{else}}FALSE{{end}}", "FALSE"),
    ("if 1", "{{if 1}}NON-ZERO{{else}}ZERO{{end}}", "NON-ZERO"),
    ("if 0", "{{if 0}}NON-ZERO{{else}}ZERO{{end}}", "ZERO"),
    ("if 1.5", "{{if 1.5}}NON-ZERO{{else}}ZERO{{end}}", "NON-ZERO"),
    ("if 0.0", "{{if .FloatZero}}NON-ZERO{{else}}ZERO{{end}}", "ZERO"),
    ("if emptystring", '{{if ""}}NON-EMPTY{{else}}EMPTY{{end}}', "EMPTY"),
    ("if string", '{{if "notempty"}}NON-EMPTY{{else}}EMPTY{{end}}', "NON-EMPTY"),
    ("if emptyslice", "{{if .SIEmpty}}NON-EMPTY{{else}}EMPTY{{end}}", "EMPTY"),
    ("if slice", "{{if .SI}}NON-EMPTY{{else}}EMPTY{{end}}", "NON-EMPTY"),
    ("if emptymap", "{{if .MSIEmpty}}NON-EMPTY{{else}}EMPTY{{end}}", "EMPTY"),
    ("if map", "{{if .MSI}}NON-EMPTY{{else}}EMPTY{{end}}", "NON-EMPTY"),
    ("if nil", "{{if .NilPtr}}NON-NIL{{else}}NIL{{end}}", "NIL"),
    ("if struct", "{{if .Copy}}TRUE{{end}}", "TRUE"),
    (
        "if $x with $y int",
        "{{if $x := true}}{{with $y := .I}}{{$x}},{{$y}}{{end}}{{end}}",
        "true,17",
    ),
    ("if else if", "{{if false}}FALSE{{else if true}}TRUE{{end}}", "TRUE"),
    ("if else chain", "{{if eq 1 3}}1{{else if eq 2 3}}2{{else if eq 3 3}}3{{end}}", "3"),
    # with
    ("with true", "{{with true}}{{.}}{{end}}", "true"),
    ("with false", "{{with false}}{{.}}{{else}}FALSE{{end}}", "FALSE"),
    ("with $x int", "{{with $x := .I}}{{$x}}{{end}}", "17"),
    ("with map", "{{with .MSI}}{{.one}}{{end}}", "1"),
    ("with empty", "{{with .SIEmpty}}{{.}}{{else}}EMPTY{{end}}", "EMPTY"),
    ("with else with", "{{with 0}}a{{else with 2}}{{.}}{{end}}", "2"),
    # range
    ("range []int", "{{range .SI}}-{{.}}-{{end}}", "-3--4--5-"),
    ("range empty no else", "{{range .SIEmpty}}-{{.}}-{{end}}", ""),
    ("range []int else", "{{range .SI}}-{{.}}-{{else}}EMPTY{{end}}", "-3--4--5-"),
    ("range empty else", "{{range .SIEmpty}}-{{.}}-{{else}}EMPTY{{end}}", "EMPTY"),
    ("range map", "{{range .MSI}}-{{.}}-{{end}}", "-1--3--2-"),
    ("range empty map else", "{{range .MSIEmpty}}-{{.}}-{{else}}EMPTY{{end}}", "EMPTY"),
    ("range $x SI", "{{range $x := .SI}}<{{$x}}>{{end}}", "<3><4><5>"),
    ("range $x $y SI", "{{range $x, $y := .SI}}<{{$x}}={{$y}}>{{end}}", "<0=3><1=4><2=5>"),
    ("range $x MSI", "{{range $x := .MSI}}<{{$x}}>{{end}}", "<1><3><2>"),
    (
        "range $x $y MSI",
        "{{range $x, $y := .MSI}}<{{$x}}={{$y}}>{{end}}",
        "<one=1><three=3><two=2>",
    ),
    ("range int", "{{range 3}}{{.}}{{end}}", "012"),
    ("range $x int", "{{range $x := 2}}<{{$x}}>{{end}}", "<0><1>"),
    ("range nil", "{{range .NilPtr}}x{{else}}none{{end}}", "none"),
    ("range break", "{{range .SI}}{{if eq . 4}}{{break}}{{end}}{{.}}{{end}}", "3"),
    ("range continue", "{{range .SI}}{{if eq . 4}}{{continue}}{{end}}{{.}}{{end}}", "35"),
    ("range assign", "{{$x := 0}}{{range $x = .SI}}{{end}}{{$x}}", "5"),
    ("range count", "{{range $i, $x := count 5}}[{{$i}}]{{$x}}{{end}}", "[0]a[1]b[2]c[3]d[4]e"),
    ("range nested $", "{{range .SI}}{{range $.SI}}{{.}}{{end}}|{{end}}", "345|345|345|"),
    # builtins
    ("print", '{{print "hello, print"}}', "hello, print"),
    ("print 123", "{{print 1 2 3}}", "1 2 3"),
    ("print nil", "{{print nil}}", "<nil>"),
    ("println", "{{println 1 2 3}}", "1 2 3\n"),
    ("printf int", '{{printf "%04x" 127}}', "007f"),
    ("printf float", '{{printf "%g" 3.5}}', "3.5"),
    ("printf %f", '{{printf "%.2f" 3.14159}}', "3.14"),
    ("printf %q", '{{printf "%q" "quote"}}', '"quote"'),
    ("printf %v", '{{printf "%v" .SI}}', "[3 4 5]"),
    ("printf %t", '{{printf "%t" true}}', "true"),
    ("printf %s of int", '{{printf "%s" 3}}', "%!s(int=3)"),
    ("printf missing", '{{printf "%d %d" 1}}', "1 %!d(MISSING)"),
    ("printf extra", '{{printf "%d" 1 2}}', "1%!(EXTRA int=2)"),
    ("printf %x string", '{{printf "%x" "hi"}}', "6869"),
    ("printf %%", '{{printf "100%%"}}', "100%"),
    ("printf lots", '{{printf "%d %s %g %s" 127 "hello" 7.5 .X}}', "127 hello 7.5 x"),
    (
        "html",
        '{{html "<script>alert(\\"XSS\\");</script>"}}',
        "&lt;script&gt;alert(&#34;XSS&#34;);&lt;/script&gt;",
    ),
    ("html pipeline", '{{printf "<script>" | html}}', "&lt;script&gt;"),
    ("html of int", "{{html .I}}", "17"),
    ("js", "{{js .}}", r"It\'d be nice."),
    ("js special", '{{js "<a>&="}}', r"\u003Ca\u003E\u0026\u003D"),
    ("urlquery", '{{"http://www.example.org/"|urlquery}}', "http%3A%2F%2Fwww.example.org%2F"),
    ("not", "{{not true}} {{not false}} {{not 0}} {{not .SI}}", "false true true false"),
    ("and", "{{and false 0}} {{and 1 0}} {{and 0 true}} {{and 1 1}}", "false 0 0 1"),
    ("or", "{{or 0 0}} {{or 1 0}} {{or 0 true}} {{or 1 1}}", "0 1 true 1"),
    ("or short circuit", "{{or 0 1 (die)}}", "1"),
    ("and short circuit", "{{and 1 0 (die)}}", "0"),
    ("and pipe-true", "{{1 | and 1}}", "1"),
    ("or pipe-false", "{{0 | or 0}}", "0"),
    ("boolean if", "{{if and true 1 `hi`}}TRUE{{else}}FALSE{{end}}", "TRUE"),
    ("len string", '{{len "héllo"}}', "6"),
    ("len slice", "{{len .SI}} {{len .MSI}}", "3 3"),
    ("index slice", "{{index .SI 0}} {{index .SI 2}}", "3 5"),
    ("index map", '{{index .MSI "two"}}', "2"),
    ("index map missing", '{{index .MSI "XXX"}}', "<nil>"),
    ("index string", '{{index "abc" 1}}', "98"),
    ("index nested", '{{index . "a" 1 "b"}}', None),
    ("slice slice", "{{slice .SI 1}} {{slice .SI 1 2}} {{slice .SI}}", "[4 5] [4] [3 4 5]"),
    ("slice string", '{{slice "xyz" 1 2}} {{slice "xyz" 1}}', "y yz"),
    (
        "eq",
        '{{eq 1 1}} {{eq 1 2}} {{eq 1 2 3 1}} {{eq .X "x"}} {{eq true true}}',
        "true false true true true",
    ),
    ("ne", '{{ne 1 1}} {{ne 1 2}} {{ne "a" "b"}}', "false true true"),
    ("lt le gt ge", '{{lt 1 2}} {{le 2 2}} {{gt 1.5 2.5}} {{ge "b" "a"}}', "true true false true"),
    ("eq nil", "{{eq .NilPtr nil}}", "true"),
    ("eq missing key", '{{eq .MSI.nope "x"}} {{ne .MSI.nope 1}}', "false true"),
    ("chain on parens", "{{(index .SI 1)}} {{(.Copy).X}} {{(.MSI).two}}", "4 x 2"),
    ("call", '{{call .BinaryFunc "1" "2"}}', "[1=2]"),
    ("call func", '{{call $.Fn "x"}}', None),
    # constants
    ("char", "{{'a'}} {{'\\n'}}", "97 10"),
    ("hex", "{{0x1F}} {{0o17}} {{0b101}} {{1_000}}", "31 15 5 1000"),
    ("float", "{{1.5}} {{1e3}} {{-2.25}}", "1.5 1000 -2.25"),
    ("big float", "{{1e6}} {{1234567.0}}", "1e+06 1.234567e+06"),
    ("raw string", "{{`a\\nb`}}", "a\\nb"),
    ("string escapes", '{{"a\\tb\\u00e9"}}', "a\tbé"),
    # templates
    ("template", '{{define "x"}}X{{.}}{{end}}{{template "x" 3}}', "X3"),
    ("template no arg", '{{define "x"}}[{{.}}]{{end}}{{template "x"}}', "[<nil>]"),
    ("template $ is dot", '{{define "x"}}{{$}}{{end}}{{template "x" .I}}', "17"),
    ("block", '{{block "b" .X}}({{.}}){{end}}', "(x)"),
    (
        "recursive define",
        '{{define "r"}}{{if .}}{{index . 0}}{{template "r" (slice . 1)}}'
        '{{end}}{{end}}{{template "r" .SI}}',
        "345",
    ),
    # trim markers and comments
    ("trim", "{{23 -}} < {{- 45}}", "23<45"),
    ("trim newlines", "a \n\t{{- 3 -}}\n b", "a3b"),
    ("no trim without space", "{{-3}}", "-3"),
    ("comment", "a{{/* a comment */}}b", "ab"),
    ("comment trim", "a  {{- /* c */ -}}  b", "ab"),
    ("multiline comment", "a{{/*\nline\n*/}}b", "ab"),
]


def _funcs() -> dict[str, Any]:
    def die() -> bool:
        raise AssertionError("die was called (short-circuit failed)")

    return {"count": lambda n: [chr(ord("a") + i) for i in range(n)], "die": die}


@pytest.mark.parametrize("name,src,want", EXEC_CASES, ids=[c[0] for c in EXEC_CASES])
def test_exec(name: str, src: str, want: str | None) -> None:
    data: Any = TVAL
    if name == "$ int":
        data, want = 7, "7"
    elif name == "js":
        data = "It'd be nice."
    elif name == "index nested":
        data, want = {"a": [0, {"b": "deep"}]}, "deep"
    elif name == "call func":
        data, want = {"Fn": lambda s: s * 2}, "xx"
    assert run(src, data, funcs=_funcs()) == want


EXEC_ERRORS = [
    ("missing field", "{{.Nope}}", "can't evaluate field Nope in type T"),
    ("args to non-method", "{{.X 1}}", "X is not a method but has arguments"),
    ("map args", "{{.MSI.one 1}}", "one is not a method but has arguments"),
    ("method error", "{{.MyError true}}", "error calling MyError: myError"),
    ("wrong arg count", "{{.Method1}}", "wrong number of args for Method1: want 1 got 0"),
    ("index out of range", "{{index .SI 10}}", "error calling index: index out of range: 10"),
    ("eq incompatible", '{{eq 1 "a"}}', "incompatible types for comparison"),
    ("lt bool", "{{lt true false}}", "invalid type for comparison"),
    ("range over string", '{{range "abc"}}{{end}}', "range can't iterate over abc"),
    ("nil command", "{{nil}}", "nil is not a command"),
    ("nil pointer", "{{.Empty.X}}", "nil pointer evaluating interface {}.X"),
    ("non-function arg", "{{1 2}}", "can't give argument to non-function 1"),
    ("no such template", '{{template "nope"}}', 'no such template "nope"'),
    ("len of int", "{{len 3}}", "error calling len: len of type int"),
    ("call nil", "{{call .NilPtr}}", "error calling call: call of nil"),
]


@pytest.mark.parametrize("name,src,want", EXEC_ERRORS, ids=[c[0] for c in EXEC_ERRORS])
def test_exec_errors(name: str, src: str, want: str) -> None:
    with pytest.raises(TemplateError) as info:
        run(src)
    assert want in str(info.value)
    assert str(info.value).startswith("template: test:1:")


def test_error_location_names_file_line_col() -> None:
    t = Template("index.html").parse("line one\nline two\n  {{.Method1 .Nope}}\n")
    with pytest.raises(TemplateError) as info:
        t.execute(TVAL)
    assert str(info.value) == (
        'template: index.html:3:13: executing "index.html" at <.Nope>: '
        "can't evaluate field Nope in type T"
    )
    assert info.value.name == "index.html" and info.value.line == 3


def test_function_errors_name_the_command() -> None:
    with pytest.raises(TemplateError) as info:
        run("{{index .SI 10}}")
    assert str(info.value) == (
        'template: test:1:2: executing "test" at <index .SI 10>: '
        "error calling index: index out of range: 10"
    )


def test_error_in_called_template_names_its_line() -> None:
    src = '{{define "inner"}}\n\n{{.Nope}}{{end}}\n{{template "inner" .}}'
    with pytest.raises(TemplateError) as info:
        run(src)
    assert str(info.value).startswith('template: test:3:2: executing "inner" at <.Nope>')


PARSE_ERRORS = [
    ("unclosed action", "hello{{range", "unclosed action"),
    ("unmatched end", "{{end}}", "unexpected {{end}}"),
    ("missing end", "{{if .X}}a", "unexpected EOF"),
    ("undefined function", "{{undefined}}", 'function "undefined" not defined'),
    ("undefined variable", "{{$x}}", 'undefined variable "$x"'),
    ("variable out of scope", "{{with $x := 4}}{{end}}{{$x}}", 'undefined variable "$x"'),
    ("assign undeclared", "{{$x = 1}}", 'undefined variable "$x"'),
    ("break outside range", "{{break}}", "{{break}} outside {{range}}"),
    ("continue outside range", "{{if true}}{{continue}}{{end}}", "{{continue}} outside {{range}}"),
    ("empty pipeline", "{{}}", "missing value for command"),
    ("unterminated string", '{{"abc}}', "unterminated quoted string"),
    ("unclosed comment", "{{/* x }}", "unclosed comment"),
    ("bad number", "{{3k}}", "illegal number syntax"),
    ("define not at top", '{{if true}}{{define "x"}}{{end}}{{end}}', "define"),
    ("template name", "{{template .X}}", "template clause"),
    ("unclosed paren", "{{(3}}", "unclosed left paren"),
    ("else outside", "{{else}}", "unexpected {{else}}"),
]


@pytest.mark.parametrize("name,src,want", PARSE_ERRORS, ids=[c[0] for c in PARSE_ERRORS])
def test_parse_errors(name: str, src: str, want: str) -> None:
    with pytest.raises(TemplateError) as info:
        Template("p.html").parse(src)
    assert want in str(info.value)
    assert str(info.value).startswith("template: p.html:")


def test_parse_error_line() -> None:
    with pytest.raises(TemplateError) as info:
        Template("p.html").parse("a\nb\n{{if}}")
    assert str(info.value).startswith("template: p.html:3: ")
    assert info.value.line == 3


def test_custom_delimiters() -> None:
    assert run("<<.X>> {{.X}}", left="<<", right=">>") == "x {{.X}}"
    assert run("[[- .X -]] [[/* c */]]", left="[[", right="]]") == "x"


def test_step_limit_stops_endless_work() -> None:
    t = Template("loop.html", limits=Limits(max_steps=10_000)).parse(
        "a\n{{range 1000000}}{{range 1000000}}x{{end}}{{end}}"
    )
    with pytest.raises(TemplateError) as info:
        t.execute(None)
    assert "exceeded the limit of 10000 steps" in str(info.value)
    assert str(info.value).startswith("template: loop.html:2:")


def test_depth_limit_stops_infinite_recursion() -> None:
    t = Template("rec.html").parse('{{define "r"}}{{template "r" .}}{{end}}\n{{template "r" .}}')
    with pytest.raises(TemplateError) as info:
        t.execute(None)
    assert "exceeded maximum template depth (64)" in str(info.value)


def test_output_limit() -> None:
    t = Template("big", limits=Limits(max_output=1000)).parse("{{range 2000}}x{{end}}")
    with pytest.raises(TemplateError, match="output larger than 1000"):
        t.execute(None)


def test_values_cannot_outgrow_memory() -> None:
    t = Template("grow", limits=Limits(max_output=1 << 16)).parse(
        '{{$s := "ab"}}{{range 100}}{{$s = print $s $s}}{{end}}{{len $s}}'
    )
    with pytest.raises(TemplateError, match="error calling print: result larger than 65536"):
        t.execute(None)
    huge = run('{{printf "%2000000d" 1}}')  # Go's fmt refuses widths over 1e6 too
    assert huge.startswith("%!(") and len(huge) < 100


def test_redefinition_and_empty_definition() -> None:
    t = Template("t").parse('{{define "a"}}one{{end}}{{template "a"}}')
    t.parse('{{define "a"}}two{{end}}', name="other")
    assert t.execute(None) == "two"
    t.parse('{{define "a"}}  {{end}}', name="other2")  # empty: does not replace
    assert t.execute(None) == "two"


def test_only_exported_names_reach_python_objects() -> None:
    with pytest.raises(TemplateError, match="can't evaluate field"):
        run("{{.__class__}}")
    with pytest.raises(TemplateError):
        run("{{.copy}}")


def test_execute_named_template() -> None:
    t = Template("main").parse('{{define "side"}}S{{.}}{{end}}main')
    assert t.execute(1, "side") == "S1"
    with pytest.raises(TemplateError, match='no template "zzz"'):
        t.execute(1, "zzz")
