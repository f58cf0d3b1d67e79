"""The Caddyfile lexer: Caddy v1's tokenizing rules, and (hypothesis) it never crashes and
round-trips tokens; the Dispenser's line logic over them."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from meshkit.web.caddyfile.lexer import (
    expand_env,
    expand_env_token,
    format_lines,
    lex,
    quote,
    representable,
)
from meshkit.web.caddyfile.tokens import CaddyfileError, Dispenser, Token, same_line


def texts(src: str) -> list[str]:
    return [t.text for t in lex(src)]


def test_white_space_splits() -> None:
    assert texts("a  b\tc\n\nd\r\ne") == ["a", "b", "c", "d", "e"]
    assert [t.line for t in lex("a  b\tc\n\nd\r\ne")] == [1, 1, 1, 3, 4]


def test_empty_and_blank() -> None:
    assert lex("") == []
    assert lex(" \n\t\r\n ") == []


def test_quotes() -> None:
    toks = lex('say "hello world" "" x')
    assert [(t.text, t.quoted) for t in toks] == [
        ("say", False),
        ("hello world", True),
        ("", True),
        ("x", False),
    ]


def test_quote_escapes_only_quotes() -> None:
    assert texts(r'"a \"b\" c"') == ['a "b" c']
    assert texts(r'"C:\dir\n"') == [r"C:\dir\n"]
    assert texts(r'"a\\b"') == [r"a\\b"]


def test_quote_in_the_middle_of_a_token_is_literal() -> None:
    assert texts('a"b c"') == ['a"b', 'c"']


def test_quoted_token_spans_lines_and_counts_them() -> None:
    toks = lex('a "b\nc"\nd')
    assert [(t.text, t.line) for t in toks] == [("a", 1), ("b\nc", 1), ("d", 3)]


def test_comments() -> None:
    assert texts("a # b c\nd") == ["a", "d"]
    assert texts("#only\n  # more\nx") == ["x"]
    assert texts("foo#bar baz\nq") == ["foo", "q"]
    assert texts('"a # not a comment"') == ["a # not a comment"]


def test_braces_are_tokens_only_when_separate() -> None:
    toks = lex('site {\n  dir "{"\n}')
    assert [(t.text, t.quoted) for t in toks] == [
        ("site", False),
        ("{", False),
        ("dir", False),
        ("{", True),
        ("}", False),
    ]
    assert texts("{a}") == ["{a}"]


def test_crlf_is_like_lf() -> None:
    assert [(t.text, t.line) for t in lex('a\r\nb "c\r\nd"\r\ne')] == [
        ("a", 1),
        ("b", 2),
        ("c\nd", 2),
        ("e", 4),
    ]


def test_unterminated_quote_is_an_error_naming_the_line() -> None:
    with pytest.raises(CaddyfileError) as exc:
        lex('a\nb "open\nmore', "site.conf")
    assert str(exc.value).startswith("site.conf:2 - unterminated quoted string")


def test_file_name_on_tokens() -> None:
    assert lex("x", "conf/a.caddy")[0].where() == "conf/a.caddy:1"


def test_env_substitution() -> None:
    env = {"HOST": "example.com", "P": "8080", "SELF": "{$SELF}"}
    assert expand_env("{$HOST}:{$P}", env) == "example.com:8080"
    assert expand_env("{%HOST%}/x", env) == "example.com/x"
    assert expand_env("{$UNSET}x", env) == "x"
    assert expand_env("{$SELF}", env) == "{$SELF}"  # one pass: no hang, no recursion
    assert expand_env("{$}", env) == "{$}"
    assert expand_env("{host}", env) == "{host}"  # placeholders are left alone


def test_env_value_is_never_a_brace() -> None:
    tok = expand_env_token(Token("C", 1, "{$B}"), {"B": "{"})
    assert tok.text == "{" and tok.quoted


def test_quote_and_format() -> None:
    assert quote("plain") == "plain"
    assert quote("two words") == '"two words"'
    assert quote("") == '""'
    assert quote('say "hi" there') == '"say \\"hi\\" there"'
    assert quote("{") == '"{"'
    assert quote("a#b") == '"a#b"'
    with pytest.raises(ValueError):
        quote("bad \\")
    assert format_lines([["a", "b c"], ["d"]]) == 'a "b c"\nd\n'


# --- hypothesis ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_lexer_never_crashes(src: str) -> None:
    try:
        toks = lex(src)
    except CaddyfileError as exc:
        assert exc.line >= 1
        return
    for t in toks:
        assert t.line >= 1
        assert t.quoted or (t.text and not any(c.isspace() for c in t.text))


caddy_chars = st.sampled_from(list('ab{}"#\\ \t\n\r$%:/.,*()'))


@settings(max_examples=300, deadline=None)
@given(st.text(caddy_chars))
def test_lexer_never_crashes_on_caddyfile_alphabet(src: str) -> None:
    with contextlib.suppress(CaddyfileError):
        lex(src)


token_text = st.one_of(
    st.text(min_size=0, max_size=12),
    st.text(caddy_chars, min_size=0, max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(token_text, min_size=1, max_size=5), min_size=1, max_size=6))
def test_tokens_round_trip(lines: list[list[str]]) -> None:
    assume(all(representable(t) for line in lines for t in line))
    src = format_lines(lines)
    toks = lex(src)
    assert [t.text for t in toks] == [t for line in lines for t in line]
    # every line of tokens stays one line for the Dispenser
    d = Dispenser(toks)
    got: list[list[str]] = []
    while d.next():
        got.append([d.val(), *d.remaining_args()])
    assert got == lines


@settings(max_examples=200, deadline=None)
@given(st.text(caddy_chars, max_size=40))
def test_relex_of_formatted_tokens_is_stable(src: str) -> None:
    try:
        toks = lex(src)
    except CaddyfileError:
        return
    assume(all(representable(t.text) for t in toks))
    again = lex(" ".join(quote(t.text, force=t.quoted) for t in toks))
    assert [(t.text, t.quoted or t.text in ("{", "}")) for t in again] == [
        (t.text, t.quoted or t.text in ("{", "}")) for t in toks
    ]


# --- the Dispenser -------------------------------------------------------------------------


def disp(src: str, name: str = "") -> Dispenser:
    return Dispenser(lex(src), name)


def test_dispenser_walks_occurrences_and_args() -> None:
    d = disp("redir /a /b 301\nredir /c /d\n")
    seen = []
    while d.next():
        seen.append((d.val(), d.line(), d.remaining_args()))
    assert seen == [("redir", 1, ["/a", "/b", "301"]), ("redir", 2, ["/c", "/d"])]


def test_dispenser_block() -> None:
    d = disp("gzip {\n  level 5\n  ext .html .css\n  not\n}\ngzip\n")
    assert d.next() and d.val() == "gzip"
    assert d.remaining_args() == []
    lines = []
    for _ in d.block():
        lines.append([d.val(), *d.remaining_args()])
    assert lines == [["level", "5"], ["ext", ".html", ".css"], ["not"]]
    assert d.next() and d.val() == "gzip" and d.line() == 6
    assert list(d.block()) == []
    assert not d.next()


def test_dispenser_block_reads_unread_args_as_options() -> None:
    # Caddy v1's NextBlock: a block is a token stream; what an option leaves unread on its
    # line is the next option
    d = disp("h / {\n  a 1 2 3\n  b\n}\n")
    d.next()
    d.remaining_args()
    got = [d.val() for _ in d.block()]
    assert got == ["a", "1", "2", "3", "b"]


def test_dispenser_block_on_one_line_and_brace_on_option_line() -> None:
    for src in ("g { level 9 }\n", "g {\n level 9 }\n", "g {\n level 9\n}\n"):
        d = disp(src)
        d.next()
        got = []
        for _ in d.block():
            got.append((d.val(), d.arg()))
        assert got == [("level", "9")], src
        assert not d.next()


def test_dispenser_arg_stops_at_braces() -> None:
    d = disp("g {\n level }\n")
    d.next()
    for _ in d.block():
        with pytest.raises(CaddyfileError, match="after 'level'"):
            d.arg()
        assert d.remaining_args() == []
    d = disp("g { }\n")
    d.next()
    assert list(d.block()) == []
    assert not d.next()


def test_dispenser_block_errors() -> None:
    d = disp("h {\n  a {\n  }\n}\n", "h")
    d.next()
    with pytest.raises(CaddyfileError) as exc:
        list(d.block())
    assert "Caddyfile:2" in str(exc.value) and "nested" in str(exc.value)
    d = disp("h {\n  a\n", "h")
    d.next()
    with pytest.raises(CaddyfileError, match="end of file"):
        list(d.block())


def test_dispenser_args_and_errors() -> None:
    d = disp("status 404 /x\n")
    d.next()
    assert d.args(3) is None and d.val() == "status"
    assert d.args(2) == ["404", "/x"]
    assert not d.next_arg()
    err = d.arg_err()
    assert str(err) == "Caddyfile:1 - wrong argument count or unexpected line ending after '/x'"
    assert "expecting 'x'" in str(d.syntax_err("x"))
    assert str(d.err("boom")) == "Caddyfile:1 - boom"


def test_dispenser_next_line_and_quoted_multiline() -> None:
    d = disp('a "x\ny" b\nc\n')
    assert d.next() and d.val() == "a"
    assert d.next_arg() and d.val() == "x\ny"
    assert d.next_arg() and d.val() == "b"  # same line as the quoted token's end
    assert not d.next_arg()
    assert d.next_line() and d.val() == "c"
    assert not d.next_line()


def test_dispenser_quoted_brace_is_an_argument() -> None:
    d = disp('dir "{" x {\n a\n}\n')
    d.next()
    assert d.remaining_args() == ["{", "x"]
    assert [d.val() for _ in d.block()] == ["a"]


def test_dispenser_splices_are_separate_lines() -> None:
    # two copies of the same snippet line (same file and line) are two lines
    toks = [Token("C", 2, "gzip", splice=1), Token("C", 2, "gzip", splice=2)]
    d = Dispenser(toks)
    assert d.next() and not d.next_arg()
    assert d.next_line() and d.val() == "gzip"


def test_dispenser_empty() -> None:
    d = Dispenser([])
    assert not d.next() and d.val() == "" and d.remaining_args() == []
    assert str(d.err("x")) == "Caddyfile:0 - x"


def test_same_line() -> None:
    a = Token("A", 3, "x")
    assert same_line(a, Token("A", 3, "y"))
    assert not same_line(a, Token("B", 3, "y"))  # another file is another line
    assert not same_line(a, Token("A", 4, "y"))
    assert not same_line(a, Token("A", 3, "y", splice=1))
    assert same_line(Token("A", 3, "p\nq", quoted=True), Token("A", 4, "y"))
    assert not same_line(Token("A", 3, "p\nq", quoted=False), Token("A", 4, "y"))
    assert Token("A", 1, "x", splice=1) == Token("A", 1, "x")  # splice is not identity
