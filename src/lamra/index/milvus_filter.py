"""``--where``: Milvus boolean expressions over an index's scalar fields, checked before sending.

Milvus parses a filter on the server and answers a typo with a gRPC error deep in a stack trace
(or, for some mistakes, a type-check failure of its C++ core). The checker here reads the subset
of the Milvus expression language a lamra collection can use and names the first problem:

    expr    := and ( ("or" | "||") and )*
    and     := unary ( ("and" | "&&") unary )*
    unary   := ("not" | "!") unary | "(" expr ")" | test
    test    := operand cmp operand [cmp operand]          (cmp: == != < <= > >=)
             | field ["not"] "in" "[" literal, ... "]"  |  field "like" 'pattern%'
    operand := field | literal   (literal: 'string', "string", integer, number, true, false)

Every test names a field, and strings compare with string fields, numbers with number fields.
"""

from __future__ import annotations

import re

from ..errors import InputError

# The filterable fields of a lamra collection and their kinds (``lamra.index.milvus`` builds them).
FIELDS = {"id": "str", "modality": "str", "source": "str", "dataset_id": "int", "task_id": "int", "segment": "int"}

_TOKEN = re.compile(r"""\s*(?:
    (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[<>()\[\],!-])
)""", re.VERBOSE)
_COMPARE = {"==", "!=", "<", "<=", ">", ">="}
_WORDS = {"and", "or", "not", "in", "like", "true", "false"}


def check_where(expression: str) -> str:
    """``expression`` stripped, or an ``InputError`` (field "where") naming the first problem."""
    text = (expression or "").strip()
    if not text:
        raise _error(expression, "the expression is empty")
    parser = _Parser(text)
    parser.expr()
    if parser.peek() is not None:
        raise _error(text, f"unexpected {parser.peek()[1]!r} at position {parser.peek()[2] + 1}")
    return text


def _error(expression: str, reason: str) -> InputError:
    fields = ", ".join(f"{name} ({'string' if kind == 'str' else 'integer'})" for name, kind in FIELDS.items())
    return InputError(f"bad --where expression {expression!r}: {reason} (fields: {fields}; e.g. "
                      "\"modality == 'image' and dataset_id in [9, 10]\")", field="where")


class _Parser:
    def __init__(self, text: str):
        self.text, self.tokens, self.at = text, [], 0
        position = 0
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                if text[position:].strip() == "":
                    break
                raise _error(text, f"cannot read {text[position:].strip()[:12]!r} at position {position + 1}"
                             + (" (use == to compare)" if text[position:].lstrip().startswith("=") else ""))
            kind = match.lastgroup
            value, start = match.group(kind), match.start(kind)
            if kind == "name" and value.lower() in _WORDS:
                kind, value = "word", value.lower()
            self.tokens.append((kind, value, start))
            position = match.end()

    def peek(self):
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self):
        token = self.peek()
        if token is None:
            raise _error(self.text, "the expression ends too early")
        self.at += 1
        return token

    def accept(self, *values) -> bool:
        token = self.peek()
        if token is not None and token[0] in ("op", "word") and token[1] in values:
            self.at += 1
            return True
        return False

    def expect(self, value: str) -> None:
        token = self.take()
        if token[1] != value:
            raise _error(self.text, f"expected {value!r} at position {token[2] + 1}, found {token[1]!r}")

    def expr(self) -> None:
        self.conjunction()
        while self.accept("or", "||"):
            self.conjunction()

    def conjunction(self) -> None:
        self.unary()
        while self.accept("and", "&&"):
            self.unary()

    def unary(self) -> None:
        if self.accept("not", "!"):
            self.unary()
        elif self.accept("("):
            self.expr()
            self.expect(")")
        else:
            self.test()

    def test(self) -> None:
        start = self.peek()
        left = self.operand()
        if left[0] == "field" and self.accept("like"):
            pattern = self.take()
            if left[1] != "str" or pattern[0] != "string":
                raise _error(self.text, f"like compares a string field with a 'pattern%' (at position {start[2] + 1})")
            return
        negated = self.accept("not")
        if self.accept("in"):
            if left[0] != "field":
                raise _error(self.text, f"in needs a field on its left (at position {start[2] + 1})")
            self.literal_list(left)
            return
        if negated:
            raise _error(self.text, f"expected 'in' after 'not' at position {start[2] + 1}")
        token = self.peek()
        if token is None or token[1] not in _COMPARE:
            found = "the end" if token is None else repr(token[1])
            raise _error(self.text, f"expected a comparison (== != < <= > >=) after {start[1]!r}, found {found}")
        operands = [left]
        while self.peek() is not None and self.peek()[1] in _COMPARE and len(operands) < 3:
            self.take()
            operands.append(self.operand())
        fields = [o for o in operands if o[0] == "field"]
        if not fields:
            raise _error(self.text, f"a comparison needs a field (at position {start[2] + 1})")
        kinds = {o[1] for o in operands}
        if len(kinds) > 1:
            raise _error(self.text, f"{fields[0][2]!r} is a {_kind_name(fields[0][1])} field; compare it with "
                         f"a {_kind_name(fields[0][1])} (at position {start[2] + 1})")

    def operand(self):
        """("field", kind, name) or ("literal", kind, text)."""
        token = self.take()
        kind, value, position = token
        if kind == "name":
            if value not in FIELDS:
                raise _error(self.text, f"unknown field {value!r} at position {position + 1}")
            return ("field", FIELDS[value], value)
        if kind == "op" and value == "-":
            number = self.take()
            if number[0] != "number":
                raise _error(self.text, f"expected a number after '-' at position {position + 1}")
            return ("literal", "int", value + number[1])
        if kind in ("string", "number"):
            return ("literal", "str" if kind == "string" else "int", value)
        if kind == "word" and value in ("true", "false"):
            return ("literal", "bool", value)
        raise _error(self.text, f"unexpected {value!r} at position {position + 1}")

    def literal_list(self, field) -> None:
        self.expect("[")
        while True:
            item = self.operand()
            if item[0] != "literal" or item[1] != field[1]:
                raise _error(self.text, f"{field[2]!r} in [...] takes {_kind_name(field[1])} values")
            if not self.accept(","):
                break
        self.expect("]")


def _kind_name(kind: str) -> str:
    return {"str": "string", "int": "number", "bool": "boolean"}[kind]
