"""A small but real SOQL subset: tokenizer, parser and evaluator over in-memory records.

Supported: ``SELECT f1, f2 FROM Object [WHERE ...] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...]
[LIMIT n] [OFFSET n]``. Conditions use ``= != <> < <= > >= IN NOT IN LIKE`` joined by AND/OR/NOT
with parentheses; as in Salesforce, mixing AND and OR at one level without parentheses is
malformed. Literals: quoted strings with backslash escapes, numbers, true/false/null, date
literals ``2025-01-01`` and datetime literals ``2025-01-01T00:00:00Z`` / ``+0000`` / ``+00:00``.
Each literal is type-checked against the field, as Salesforce does.
"""

import datetime
import functools
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

# object -> field -> type (id, string, boolean, date, datetime, number)
SCHEMA: dict[str, dict[str, str]] = {
    "Account": {
        "Id": "id",
        "Name": "string",
        "ParentId": "id",
        "Type": "string",
        "BillingStreet": "string",
        "BillingCity": "string",
        "BillingState": "string",
        "BillingPostalCode": "string",
        "BillingCountry": "string",
        "CurrencyIsoCode": "string",
        "Legal_Entity__c": "string",
        "PO_Required__c": "boolean",
        **{name: "string" for name in ("Finsync_Invoice_Status__c", "Finsync_ERP_Invoice_Id__c")},
        "Finsync_Paid__c": "boolean",
        "Finsync_External_Id__c": "string",
        "CreatedDate": "datetime",
        "LastModifiedDate": "datetime",
        "SystemModstamp": "datetime",
    },
    "Opportunity": {
        "Id": "id",
        "Name": "string",
        "AccountId": "id",
        "StageName": "string",
        "CloseDate": "date",
        "Amount": "number",
        "Type": "string",
        "IsClosed": "boolean",
        "IsWon": "boolean",
        "ContractId": "id",
        "CurrencyIsoCode": "string",
        # The demo org's custom field for the customer's purchase order (FINSYNC_PO_SOURCE).
        "PO_Number__c": "string",
        **{name: "string" for name in ("Finsync_Invoice_Status__c", "Finsync_ERP_Invoice_Id__c")},
        "Finsync_Paid__c": "boolean",
        "Finsync_Stripe_Invoice_Id__c": "string",
        "Finsync_External_Id__c": "string",
        "CreatedDate": "datetime",
        "LastModifiedDate": "datetime",
        "SystemModstamp": "datetime",
    },
    "Contract": {
        "Id": "id",
        "AccountId": "id",
        "Status": "string",
        "StartDate": "date",
        "EndDate": "date",
        "ContractTerm": "number",
        "ContractNumber": "string",
        "CurrencyIsoCode": "string",
        "ActivatedDate": "datetime",
        "CreatedDate": "datetime",
        "LastModifiedDate": "datetime",
        "SystemModstamp": "datetime",
    },
    # Salesforce CPQ, a managed package: custom objects and fields in the SBQQ__ namespace.
    "SBQQ__Quote__c": {
        "Id": "id",
        "Name": "string",
        "SBQQ__Account__c": "id",
        "SBQQ__Opportunity2__c": "id",
        "SBQQ__Primary__c": "boolean",
        "SBQQ__Status__c": "string",
        "SBQQ__Type__c": "string",
        "SBQQ__StartDate__c": "date",
        "SBQQ__EndDate__c": "date",
        "SBQQ__SubscriptionTerm__c": "number",
        "SBQQ__NetAmount__c": "number",
        "SBQQ__BillingFrequency__c": "string",
        "SBQQ__PaymentTerms__c": "string",
        "SBQQ__MasterContract__c": "id",
        "SBQQ__Ordered__c": "boolean",
        "PO_Number__c": "string",
        "CurrencyIsoCode": "string",
        "CreatedDate": "datetime",
        "LastModifiedDate": "datetime",
        "SystemModstamp": "datetime",
    },
    "SBQQ__QuoteLine__c": {
        "Id": "id",
        "Name": "string",
        "SBQQ__Quote__c": "id",
        "SBQQ__Number__c": "number",
        "SBQQ__Product__c": "id",
        "SBQQ__ProductCode__c": "string",
        "SBQQ__Quantity__c": "number",
        "SBQQ__PriorQuantity__c": "number",
        "SBQQ__ListPrice__c": "number",
        "SBQQ__NetPrice__c": "number",
        "SBQQ__NetTotal__c": "number",
        "SBQQ__StartDate__c": "date",
        "SBQQ__EndDate__c": "date",
        "SBQQ__SubscriptionTerm__c": "number",
        "SBQQ__ProrateMultiplier__c": "number",
        "SBQQ__SubscriptionPricing__c": "string",
        "SBQQ__ChargeType__c": "string",
        "SBQQ__BillingType__c": "string",
        "SBQQ__BillingFrequency__c": "string",
        "SBQQ__Renewal__c": "boolean",
        "SBQQ__Existing__c": "boolean",
        "SBQQ__RenewedSubscription__c": "id",
        "SBQQ__UpgradedSubscription__c": "id",
        "Stripe_Subscription_Item_Id__c": "string",
        "CurrencyIsoCode": "string",
        "CreatedDate": "datetime",
        "LastModifiedDate": "datetime",
        "SystemModstamp": "datetime",
    },
    "SBQQ__Subscription__c": {
        "Id": "id",
        "Name": "string",
        "SBQQ__Contract__c": "id",
        "SBQQ__Account__c": "id",
        "SBQQ__Product__c": "id",
        "SBQQ__Quantity__c": "number",
        "SBQQ__RenewalQuantity__c": "number",
        "SBQQ__ListPrice__c": "number",
        "SBQQ__NetPrice__c": "number",
        "SBQQ__CustomerPrice__c": "number",
        "SBQQ__RenewalPrice__c": "number",
        "SBQQ__SubscriptionStartDate__c": "date",
        "SBQQ__SubscriptionEndDate__c": "date",
        "SBQQ__StartDate__c": "date",
        "SBQQ__EndDate__c": "date",
        "SBQQ__QuoteLine__c": "id",
        "SBQQ__OriginalQuoteLine__c": "id",
        "SBQQ__RevisedSubscription__c": "id",
        "SBQQ__RootId__c": "string",
        "SBQQ__TerminatedDate__c": "date",
        "SBQQ__SubscriptionType__c": "string",
        "SBQQ__ProductSubscriptionType__c": "string",
        "SBQQ__BillingFrequency__c": "string",
        "SBQQ__BillingType__c": "string",
        "SBQQ__ChargeType__c": "string",
        "SBQQ__ProrateMultiplier__c": "number",
        "Stripe_Subscription_Item_Id__c": "string",
        "CurrencyIsoCode": "string",
        "CreatedDate": "datetime",
        "LastModifiedDate": "datetime",
        "SystemModstamp": "datetime",
    },
}

_KEYWORDS = {
    "SELECT",
    "FROM",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "IN",
    "LIKE",
    "ORDER",
    "BY",
    "ASC",
    "DESC",
    "NULLS",
    "FIRST",
    "LAST",
    "LIMIT",
    "OFFSET",
    "TRUE",
    "FALSE",
    "NULL",
}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})(?![\w:])
  | (?P<number>[+-]?\d+(?:\.\d+)?)(?![\w.])
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    """,
    re.VERBOSE,
)


class SoqlError(Exception):
    """A query Salesforce would refuse; ``code`` is its errorCode."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Token:
    """One lexical token; ``chars`` keeps a string's characters with their escaped flag."""

    kind: str
    text: str
    pos: int
    value: Any = None
    chars: tuple[tuple[str, bool], ...] = ()


def tokenize(text: str) -> list[Token]:
    """Split a SOQL statement into tokens.

    Raises:
        SoqlError: MALFORMED_QUERY on an unterminated string, a bad escape or a stray character.
    """
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        if text[pos] == "'":
            chars: list[tuple[str, bool]] = []
            i = pos + 1
            while True:
                if i >= len(text):
                    raise SoqlError("MALFORMED_QUERY", f"unterminated string at column {pos + 1}")
                ch = text[i]
                if ch == "\\":
                    if i + 1 >= len(text):
                        raise SoqlError("MALFORMED_QUERY", "unterminated escape sequence")
                    nxt = text[i + 1]
                    if nxt in _ESCAPES:
                        chars.append((_ESCAPES[nxt], True))
                    elif nxt in "%_":
                        chars.append((nxt, True))
                    else:
                        raise SoqlError(
                            "MALFORMED_QUERY",
                            f"Invalid string literal: illegal escape sequence \\{nxt} "
                            f"at column {i + 1}",
                        )
                    i += 2
                    continue
                if ch == "'":
                    break
                chars.append((ch, False))
                i += 1
            tokens.append(
                Token("string", text[pos : i + 1], pos, "".join(c for c, _ in chars), tuple(chars))
            )
            pos = i + 1
            continue
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise SoqlError(
                "MALFORMED_QUERY", f"unexpected character {text[pos]!r} at column {pos + 1}"
            )
        kind = match.lastgroup or ""
        word = match.group()
        if kind == "datetime":
            tokens.append(Token("datetime", word, pos, _parse_datetime_literal(word)))
        elif kind == "date":
            try:
                datetime.date.fromisoformat(word)
            except ValueError:
                raise SoqlError("MALFORMED_QUERY", f"invalid date literal {word}") from None
            tokens.append(Token("date", word, pos, word))
        elif kind == "number":
            tokens.append(Token("number", word, pos, Decimal(word)))
        elif kind == "ident" and word.upper() in _KEYWORDS:
            tokens.append(Token("kw", word.upper(), pos))
        elif kind != "ws":
            tokens.append(Token(kind, word, pos))
        pos = match.end()
    tokens.append(Token("eof", "", len(text)))
    return tokens


def _parse_datetime_literal(word: str) -> datetime.datetime:
    text = word.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    try:
        return datetime.datetime.fromisoformat(text).astimezone(datetime.UTC)
    except ValueError:
        raise SoqlError("MALFORMED_QUERY", f"invalid datetime literal {word}") from None


@functools.lru_cache(maxsize=200_000)
def _record_datetime(value: str) -> datetime.datetime | None:
    try:
        return _parse_datetime_literal(value.replace(".000", ""))
    except SoqlError:
        return None


@dataclass
class Cond:
    """A leaf predicate: field op literal(s)."""

    field: str
    op: str  # = != < <= > >= IN NOTIN LIKE
    values: list[Token]
    like: re.Pattern[str] | None = None


@dataclass
class BoolNode:
    """AND / OR of children, or NOT of one child."""

    op: str
    children: list["Node"]


Node = Cond | BoolNode


@dataclass
class Query:
    """A parsed SELECT."""

    obj: str
    fields: list[str]
    where: Node | None
    order: list[tuple[str, bool, bool]]  # field, descending, nulls first
    limit: int | None
    offset: int


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.obj = ""

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect_kw(self, word: str) -> None:
        tok = self.take()
        if tok.kind != "kw" or tok.text != word:
            raise SoqlError(
                "MALFORMED_QUERY",
                f"unexpected token: '{tok.text or 'end of query'}' (expected {word}) "
                f"at column {tok.pos + 1}",
            )

    def at_kw(self, *words: str) -> bool:
        tok = self.peek()
        return tok.kind == "kw" and tok.text in words

    def ident(self) -> Token:
        tok = self.take()
        if tok.kind != "ident":
            raise SoqlError(
                "MALFORMED_QUERY",
                f"unexpected token: '{tok.text or 'end of query'}' at column {tok.pos + 1}",
            )
        return tok

    def parse(self) -> Query:
        self.expect_kw("SELECT")
        raw_fields = [self.ident()]
        while self.peek().kind == "punct" and self.peek().text == ",":
            self.take()
            raw_fields.append(self.ident())
        self.expect_kw("FROM")
        obj_tok = self.ident()
        obj = next((o for o in SCHEMA if o.lower() == obj_tok.text.lower()), None)
        if obj is None:
            raise SoqlError(
                "INVALID_TYPE",
                f"sObject type '{obj_tok.text}' is not supported. If you are attempting to use "
                "a custom object, be sure to append the '__c' after the entity name.",
            )
        self.obj = obj
        fields = [self.field(tok) for tok in raw_fields]
        where = None
        if self.at_kw("WHERE"):
            self.take()
            where = self.condition()
        order: list[tuple[str, bool, bool]] = []
        if self.at_kw("ORDER"):
            self.take()
            self.expect_kw("BY")
            while True:
                name = self.field(self.ident())
                desc = False
                if self.at_kw("ASC", "DESC"):
                    desc = self.take().text == "DESC"
                nulls_first = not desc
                if self.at_kw("NULLS"):
                    self.take()
                    if not self.at_kw("FIRST", "LAST"):
                        raise SoqlError("MALFORMED_QUERY", "expected FIRST or LAST after NULLS")
                    nulls_first = self.take().text == "FIRST"
                order.append((name, desc, nulls_first))
                if self.peek().kind == "punct" and self.peek().text == ",":
                    self.take()
                    continue
                break
        limit = self.count_clause("LIMIT")
        offset = self.count_clause("OFFSET") or 0
        tok = self.peek()
        if tok.kind != "eof":
            raise SoqlError(
                "MALFORMED_QUERY", f"unexpected token: '{tok.text}' at column {tok.pos + 1}"
            )
        return Query(obj, fields, where, order, limit, offset)

    def count_clause(self, word: str) -> int | None:
        if not self.at_kw(word):
            return None
        self.take()
        tok = self.take()
        if tok.kind != "number" or not tok.text.isdigit():
            raise SoqlError("MALFORMED_QUERY", f"{word} requires a non-negative integer")
        return int(tok.text)

    def field(self, tok: Token) -> str:
        if "." in tok.text:
            raise SoqlError(
                "INVALID_FIELD",
                f"Didn't understand relationship '{tok.text.split('.')[0]}' in field path. "
                "The sandbox supports fields of the queried object only.",
            )
        name = next((f for f in SCHEMA[self.obj] if f.lower() == tok.text.lower()), None)
        if name is None:
            raise SoqlError(
                "INVALID_FIELD",
                f"No such column '{tok.text}' on entity '{self.obj}'. If you are attempting to "
                "use a custom field, be sure to append the '__c' after the custom field name.",
            )
        return name

    def condition(self) -> Node:
        first = self.unary()
        joiner: str | None = None
        children = [first]
        while self.at_kw("AND", "OR"):
            word = self.take().text
            if joiner is not None and word != joiner:
                raise SoqlError(
                    "MALFORMED_QUERY",
                    "unexpected token: mixing AND and OR without parentheses is not allowed",
                )
            joiner = word
            children.append(self.unary())
        return first if joiner is None else BoolNode(joiner, children)

    def unary(self) -> Node:
        if self.at_kw("NOT"):
            self.take()
            return BoolNode("NOT", [self.unary()])
        tok = self.peek()
        if tok.kind == "punct" and tok.text == "(":
            self.take()
            node = self.condition()
            close = self.take()
            if close.kind != "punct" or close.text != ")":
                raise SoqlError("MALFORMED_QUERY", f"expected ')' at column {close.pos + 1}")
            return node
        return self.predicate()

    def literal(self) -> Token:
        tok = self.take()
        if tok.kind in ("string", "number", "date", "datetime"):
            return tok
        if tok.kind == "kw" and tok.text in ("TRUE", "FALSE", "NULL"):
            return tok
        raise SoqlError(
            "MALFORMED_QUERY",
            f"unexpected token: '{tok.text or 'end of query'}' at column {tok.pos + 1}",
        )

    def predicate(self) -> Cond:
        name = self.field(self.ident())
        ftype = SCHEMA[self.obj][name]
        tok = self.take()
        if tok.kind == "op":
            op = "!=" if tok.text == "<>" else tok.text
            value = self.literal()
            self.check_type(name, ftype, value)
            if op not in ("=", "!=") and ftype == "boolean":
                raise SoqlError("INVALID_FIELD", f"operator {op} is not valid for field {name}")
            return Cond(name, op, [value])
        negate = False
        if tok.kind == "kw" and tok.text == "NOT":
            negate = True
            tok = self.take()
        if tok.kind == "kw" and tok.text == "IN":
            opening = self.take()
            if opening.kind != "punct" or opening.text != "(":
                raise SoqlError("MALFORMED_QUERY", "IN requires a parenthesised list")
            values = [self.literal()]
            while self.peek().kind == "punct" and self.peek().text == ",":
                self.take()
                values.append(self.literal())
            closing = self.take()
            if closing.kind != "punct" or closing.text != ")":
                raise SoqlError("MALFORMED_QUERY", "expected ')' to close the IN list")
            for value in values:
                self.check_type(name, ftype, value)
            return Cond(name, "NOTIN" if negate else "IN", values)
        if tok.kind == "kw" and tok.text == "LIKE" and not negate:
            value = self.take()
            if value.kind != "string":
                raise SoqlError("MALFORMED_QUERY", "LIKE requires a quoted string")
            if ftype not in ("string", "id"):
                raise SoqlError("INVALID_FIELD", f"LIKE is not valid for field {name}")
            pattern = "".join(
                (".*" if c == "%" else "." if c == "_" else re.escape(c))
                if not escaped
                else re.escape(c)
                for c, escaped in value.chars
            )
            return Cond(name, "LIKE", [value], re.compile(pattern, re.IGNORECASE | re.DOTALL))
        raise SoqlError(
            "MALFORMED_QUERY",
            f"unexpected token: '{tok.text or 'end of query'}' at column {tok.pos + 1}",
        )

    @staticmethod
    def check_type(name: str, ftype: str, tok: Token) -> None:
        if tok.kind == "kw" and tok.text == "NULL":
            return
        ok = {
            "id": tok.kind == "string",
            "string": tok.kind == "string",
            "boolean": tok.kind == "kw" and tok.text in ("TRUE", "FALSE"),
            "date": tok.kind == "date",
            "datetime": tok.kind == "datetime",
            "number": tok.kind == "number",
        }[ftype]
        if not ok:
            quoted = "should" if ftype in ("id", "string") else "should not"
            raise SoqlError(
                "INVALID_FIELD",
                f"value of filter criterion for field '{name}' must be of type {ftype} "
                f"and {quoted} be enclosed in quotes",
            )


def parse(text: str) -> Query:
    """Parse a SOQL statement.

    Raises:
        SoqlError: MALFORMED_QUERY, INVALID_FIELD or INVALID_TYPE, as Salesforce would answer.
    """
    return _Parser(text).parse()


def _typed(ftype: str, value: Any) -> Any:
    """A record value in a comparable form for its field type (None stays None)."""
    if value is None:
        return None
    if ftype == "string":
        return str(value).casefold()
    if ftype == "id":
        return str(value)[:15]
    if ftype == "number":
        try:
            return Decimal(str(value))
        except InvalidOperation:
            return None
    if ftype == "datetime":
        return _record_datetime(str(value))
    if ftype == "boolean":
        return bool(value)
    return str(value)


def _literal(ftype: str, tok: Token) -> Any:
    if tok.kind == "kw":
        return {"TRUE": True, "FALSE": False, "NULL": None}[tok.text]
    return _typed(ftype, tok.value)


def _matches(node: Node, rec: dict[str, Any], obj: str) -> bool:
    if isinstance(node, BoolNode):
        if node.op == "AND":
            return all(_matches(c, rec, obj) for c in node.children)
        if node.op == "OR":
            return any(_matches(c, rec, obj) for c in node.children)
        return not _matches(node.children[0], rec, obj)
    ftype = SCHEMA[obj][node.field]
    value = _typed(ftype, rec.get(node.field))
    if node.op == "LIKE":
        return (
            value is not None
            and node.like is not None
            and bool(node.like.fullmatch(str(rec.get(node.field))))
        )
    if node.op in ("IN", "NOTIN"):
        hit = any(value == _literal(ftype, v) for v in node.values)
        return hit if node.op == "IN" else not hit
    lit = _literal(ftype, node.values[0])
    if node.op == "=":
        return value == lit
    if node.op == "!=":
        return value != lit
    if value is None or lit is None:
        return False
    try:
        return bool(
            {"<": value < lit, "<=": value <= lit, ">": value > lit, ">=": value >= lit}[node.op]
        )
    except TypeError:
        return False


def execute(query: Query, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Filter, order, offset and limit ``records``; return the matching records whole."""
    rows = [r for r in records if query.where is None or _matches(query.where, r, query.obj)]
    for name, desc, nulls_first in reversed(query.order):
        ftype = SCHEMA[query.obj][name]
        null_rank = (0 if nulls_first else 2) if not desc else (2 if nulls_first else 0)

        def key(
            rec: dict[str, Any], ftype: str = ftype, null_rank: int = null_rank, name: str = name
        ) -> tuple[int, Any]:
            value = _typed(ftype, rec.get(name))
            return (null_rank, 0) if value is None else (1, value)

        rows.sort(key=key, reverse=desc)
    rows = rows[query.offset :]
    if query.limit is not None:
        rows = rows[: query.limit]
    return rows
