"""A SuiteQL subset translated to SQLite with bound parameters.

Supported: ``SELECT col, ... | * FROM customer|transaction|paymentapplication [WHERE ...]
[ORDER BY col [ASC|DESC], ...]``; conditions ``= != <> < <= > >= [NOT] IN (...) [NOT] LIKE
IS [NOT] NULL`` joined by AND/OR/NOT with parentheses; literals ``'text'`` (``''`` escapes a
quote), numbers, NULL and ``TO_DATE('2025-01-01', 'YYYY-MM-DD')``. Tables and columns are
whitelisted and every literal is bound, so no text of the query reaches SQLite verbatim.

``transaction`` holds invoices (type 'CustInvc'), credit memos ('CustCred'), customer
payments ('CustPymt') and customer refunds ('CustRfnd'). ``paymentapplication`` (what a payment
or credit memo applied to which invoice, and what a refund paid out of which credit) is a
sandbox simplification: a real account answers that from ``transactionline`` and
``previoustransactionlinelink`` (see ``netsuite_sim``).
"""

import datetime
import re
from dataclasses import dataclass
from typing import Any

TABLES: dict[str, tuple[str, list[str]]] = {
    "customer": (
        "ns_customer",
        [
            "id",
            "externalid",
            "entityid",
            "companyname",
            "subsidiary",
            "currency",
            "parent",
            "lastmodifieddate",
            "datecreated",
        ],
    ),
    "transaction": (
        "ns_transaction",
        [
            "id",
            "externalid",
            "type",
            "tranid",
            "entity",
            "trandate",
            "currency",
            "subsidiary",
            "foreigntotal",
            "status",
            "memo",
            "otherrefnum",
            "lastmodifieddate",
            "datecreated",
            "amountremaining",
            "foreignamountremaining",
        ],
    ),
    "paymentapplication": (
        "ns_application",
        ["id", "payment", "paymenttype", "invoice", "amount"],
    ),
}
# Exact decimal text columns: compared with numbers by value, not as text.
_NUMERIC_TEXT = {"foreigntotal", "amountremaining", "foreignamountremaining", "amount"}
_KEYWORDS = {
    "SELECT",
    "FROM",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "IN",
    "LIKE",
    "IS",
    "NULL",
    "ORDER",
    "BY",
    "ASC",
    "DESC",
    "TO_DATE",
    "ESCAPE",
}
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<number>\d+(?:\.\d+)?)(?![\w.])
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),*])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)
_DATE_FORMATS = {"YYYY-MM-DD": "%Y-%m-%d", "MM/DD/YYYY": "%m/%d/%Y", "DD.MM.YYYY": "%d.%m.%Y"}


class SuiteQLError(Exception):
    """A query NetSuite would refuse (400 with o:errorDetails)."""


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


@dataclass
class Translated:
    """SQL for the rows and for the count, their parameters and the output columns."""

    sql: str
    count_sql: str
    params: list[Any]
    columns: list[str]


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise SuiteQLError(f"Invalid search query: unexpected character at position {pos}.")
        kind = match.lastgroup or ""
        word = match.group()
        if kind == "ident" and word.upper() in _KEYWORDS:
            tokens.append(_Tok("kw", word.upper(), pos))
        elif kind != "ws":
            tokens.append(_Tok(kind, word, pos))
        pos = match.end()
    tokens.append(_Tok("eof", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokenize(text)
        self.i = 0
        self.params: list[Any] = []
        self.columns: list[str] = []
        self.table = ""

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def is_kw(self, *words: str) -> bool:
        tok = self.peek()
        return tok.kind == "kw" and tok.text in words

    def is_punct(self, ch: str) -> bool:
        tok = self.peek()
        return tok.kind == "punct" and tok.text == ch

    def expect(self, kind: str, text: str | None = None) -> _Tok:
        tok = self.take()
        if tok.kind != kind or (text is not None and tok.text != text):
            raise SuiteQLError(
                f"Invalid search query: unexpected '{tok.text or 'end of query'}' at position "
                f"{tok.pos}."
            )
        return tok

    def column(self) -> str:
        return self.check_column(self.expect("ident"))

    def check_column(self, tok: _Tok) -> str:
        name = tok.text.lower()
        if name not in self.columns:
            raise SuiteQLError(
                f"Invalid search query. Search error occurred: Field '{tok.text}' for record "
                f"'{self.table}' was not found. Reason: NOT_EXPOSED - Not available for channel "
                "SEARCH"
            )
        return name

    def translate(self) -> Translated:
        self.expect("kw", "SELECT")
        select_toks: list[_Tok] = []
        star = False
        if self.is_punct("*"):
            self.take()
            star = True
        else:
            select_toks.append(self.expect("ident"))
            while self.is_punct(","):
                self.take()
                select_toks.append(self.expect("ident"))
        self.expect("kw", "FROM")
        table_tok = self.expect("ident")
        self.table = table_tok.text.lower()
        if self.table not in TABLES:
            raise SuiteQLError(
                f"Invalid search query. Search error occurred: Record '{table_tok.text}' was not "
                "found."
            )
        sql_table, self.columns = TABLES[self.table]
        out: list[str] = []
        if star:
            out = list(self.columns)
        out += [self.check_column(tok) for tok in select_toks]
        where = ""
        if self.is_kw("WHERE"):
            self.take()
            where = " WHERE " + self.condition()
        order = ""
        if self.is_kw("ORDER"):
            self.take()
            self.expect("kw", "BY")
            parts = []
            while True:
                name = self.column()
                direction = "ASC"
                if self.is_kw("ASC", "DESC"):
                    direction = self.take().text
                parts.append(f"{name} {direction}")
                if not self.is_punct(","):
                    break
                self.take()
            order = " ORDER BY " + ", ".join(parts)
        if self.peek().kind != "eof":
            tok = self.peek()
            raise SuiteQLError(
                f"Invalid search query: unexpected '{tok.text}' at position {tok.pos}."
            )
        select = ", ".join(out)
        return Translated(
            sql=f"SELECT {select} FROM {sql_table}{where}{order}",
            count_sql=f"SELECT COUNT(*) FROM {sql_table}{where}",
            params=self.params,
            columns=out,
        )

    def condition(self) -> str:
        parts = [self.conjunction()]
        while self.is_kw("OR"):
            self.take()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def conjunction(self) -> str:
        parts = [self.unary()]
        while self.is_kw("AND"):
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def unary(self) -> str:
        if self.is_kw("NOT"):
            self.take()
            return f"(NOT {self.unary()})"
        if self.is_punct("("):
            self.take()
            inner = self.condition()
            self.expect("punct", ")")
            return f"({inner})"
        return self.predicate()

    def literal(self) -> tuple[str, Any]:
        tok = self.take()
        if tok.kind == "string":
            return "string", tok.text[1:-1].replace("''", "'")
        if tok.kind == "number":
            return "number", tok.text
        if tok.kind == "kw" and tok.text == "TO_DATE":
            self.expect("punct", "(")
            value = self.expect("string").text[1:-1]
            self.expect("punct", ",")
            fmt = self.expect("string").text[1:-1].upper()
            self.expect("punct", ")")
            if fmt not in _DATE_FORMATS:
                raise SuiteQLError(f"Invalid search query: unsupported date format '{fmt}'.")
            try:
                day = datetime.datetime.strptime(value, _DATE_FORMATS[fmt]).date()
            except ValueError:
                raise SuiteQLError(
                    f"Invalid search query: '{value}' does not match format '{fmt}'."
                ) from None
            return "date", day.isoformat()
        raise SuiteQLError(
            f"Invalid search query: unexpected '{tok.text or 'end of query'}' at position "
            f"{tok.pos}."
        )

    def bind(self, name: str, kind: str, value: Any) -> str:
        if kind == "number":
            self.params.append(value)
            if name in _NUMERIC_TEXT:
                # Amounts are stored as exact decimal text; compare them by value.
                return "CAST(? AS NUMERIC)"
            return "?"
        self.params.append(value)
        return "?"

    def lhs(self, name: str, kind: str) -> str:
        return f"CAST({name} AS NUMERIC)" if name in _NUMERIC_TEXT and kind == "number" else name

    def predicate(self) -> str:
        name = self.column()
        tok = self.take()
        if tok.kind == "op":
            op = "!=" if tok.text == "<>" else tok.text
            kind, value = self.literal()
            return f"{self.lhs(name, kind)} {op} {self.bind(name, kind, value)}"
        negate = False
        if tok.kind == "kw" and tok.text == "IS":
            if self.is_kw("NOT"):
                self.take()
                negate = True
            self.expect("kw", "NULL")
            return f"{name} IS {'NOT ' if negate else ''}NULL"
        if tok.kind == "kw" and tok.text == "NOT":
            negate = True
            tok = self.take()
        if tok.kind == "kw" and tok.text == "IN":
            self.expect("punct", "(")
            binds = []
            kind, value = self.literal()
            binds.append(self.bind(name, kind, value))
            while self.is_punct(","):
                self.take()
                kind, value = self.literal()
                binds.append(self.bind(name, kind, value))
            self.expect("punct", ")")
            return f"{self.lhs(name, kind)} {'NOT ' if negate else ''}IN ({', '.join(binds)})"
        if tok.kind == "kw" and tok.text == "LIKE":
            pattern = self.expect("string").text[1:-1].replace("''", "'")
            self.params.append(pattern)
            return f"{name} {'NOT ' if negate else ''}LIKE ?"
        raise SuiteQLError(
            f"Invalid search query: unexpected '{tok.text or 'end of query'}' at position "
            f"{tok.pos}."
        )


def translate(text: str) -> Translated:
    """Translate SuiteQL to SQLite SQL over the sandbox tables.

    Raises:
        SuiteQLError: Unknown table or column, or a statement outside the supported subset.
    """
    return _Parser(text).translate()
