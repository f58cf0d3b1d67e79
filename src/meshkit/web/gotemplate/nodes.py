"""The parse tree of a Go template (what meshkit.web.gotemplate.parser builds and exec walks).

Every node keeps `pos`, its offset in the template text, for Go-style error locations
(NAME:LINE:COL), and operands know how they were written (`str()`) for the `at <...>` part.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class Node:
    pos: int


# --- operands -------------------------------------------------------------------------------
@dataclass(eq=False, slots=True)
class Dot(Node):
    def __str__(self) -> str:
        return "."


@dataclass(eq=False, slots=True)
class Nil(Node):
    def __str__(self) -> str:
        return "nil"


@dataclass(eq=False, slots=True)
class Const(Node):
    value: object
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(eq=False, slots=True)
class Field(Node):
    """.A.B: look each name up in dot."""

    names: list[str]

    def __str__(self) -> str:
        return "".join("." + n for n in self.names)


@dataclass(eq=False, slots=True)
class Variable(Node):
    """$x.A.B (names[0] is the variable, with its dollar)."""

    names: list[str]

    def __str__(self) -> str:
        return self.names[0] + "".join("." + n for n in self.names[1:])


@dataclass(eq=False, slots=True)
class Identifier(Node):
    """A function name."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(eq=False, slots=True)
class Chain(Node):
    """(pipeline).A.B or $x... — fields looked up in the value of `node`."""

    node: Node
    names: list[str]

    def __str__(self) -> str:
        inner = str(self.node)
        if isinstance(self.node, Pipe):
            inner = "(" + inner + ")"
        return inner + "".join("." + n for n in self.names)


@dataclass(eq=False, slots=True)
class Command(Node):
    args: list[Node] = field(default_factory=list)

    def __str__(self) -> str:
        parts = []
        for a in self.args:
            s = str(a)
            parts.append("(" + s + ")" if isinstance(a, Pipe) else s)
        return " ".join(parts)


@dataclass(eq=False, slots=True)
class Pipe(Node):
    decl: list[str] = field(default_factory=list)  # variable names ($x), declared or assigned
    is_assign: bool = False  # `=` rather than `:=`
    cmds: list[Command] = field(default_factory=list)

    def __str__(self) -> str:
        s = ""
        if self.decl:
            s = ", ".join(self.decl) + (" = " if self.is_assign else " := ")
        return s + " | ".join(str(c) for c in self.cmds)


# --- statements -----------------------------------------------------------------------------
@dataclass(eq=False, slots=True)
class Text(Node):
    text: str


@dataclass(eq=False, slots=True)
class Action(Node):
    pipe: Pipe


@dataclass(eq=False, slots=True)
class ListNode(Node):
    nodes: list[Node] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Branch(Node):
    """if / range / with: `kind` names which."""

    kind: str
    pipe: Pipe
    body: ListNode
    else_: ListNode | None = None


@dataclass(eq=False, slots=True)
class TemplateCall(Node):
    name: str
    pipe: Pipe | None

    def __str__(self) -> str:
        tail = " " + str(self.pipe) if self.pipe is not None else ""
        return f'{{{{template "{self.name}"{tail}}}}}'


@dataclass(eq=False, slots=True)
class Break(Node):
    pass


@dataclass(eq=False, slots=True)
class Continue(Node):
    pass


@dataclass(eq=False, slots=True)
class Tree:
    """One named template: its body, and the text it was parsed from (for locations)."""

    name: str
    parse_name: str  # the file it came from (Go's ParseName)
    root: ListNode
    text: str
