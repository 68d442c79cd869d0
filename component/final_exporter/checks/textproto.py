"""The protocol buffer text format, read against a schema without generated classes.

`saved_model.pbtxt` (an `as_text` export) is a `tensorflow.SavedModel` in text
format. Like checks/protowire.py for the binary form, this reads only the fields
a schema lists (the same `Schema`, so both forms decode to equal `Message`s) and
skips the rest, the graph, without keeping it. It takes what TensorFlow and
`google.protobuf.text_format` write: `#` comments, `:` before a message or not,
`{}` or `<>`, `[a, b]` lists, adjacent strings joined, `[type.googleapis.com/...]`
field names of `Any`s and extensions.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

from final_exporter.checks.protowire import Message, Schema

# Whitespace and `#` comments (no group), then one token: a quoted string, a word
# (name, number, enum value, URL of an Any), or punctuation.
_TOKEN_RE = re.compile(
    r"""\s+|\#[^\n]*|("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|[^\s{}<>:;,\[\]"'\#]+|[{}<>:;,\[\]])"""
)
_CLOSING = {'{': '}', '<': '>'}


class TextFormatError(ValueError):
    """The text is not a protocol buffer message in text format."""


class _TextReader:
    """Reads text format against a schema; fields it does not list are skipped."""

    def __init__(self, text: str, schema: Schema) -> None:
        self._tokens = [t for t in _TOKEN_RE.findall(text) if t]
        self._pos = 0
        self._schema = schema

    def _take(self) -> str | None:
        if self._pos >= len(self._tokens):
            return None
        self._pos += 1
        return self._tokens[self._pos - 1]

    def _peek(self) -> str | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def message(self, message: str | None, close: str | None) -> Message:
        """Reads fields up to `close` (None: the end of the text); `message` None skips them."""
        decoded: Message = {}
        schema = self._schema[message] if message else {}
        while (token := self._take()) != close:
            if token is None:
                raise TextFormatError(f'the text ends before a closing {close!r}')
            name = self._field_name(token)
            kind = schema[name][1] if name in schema else None
            token = self._take()
            if token == ':':
                token = self._take()
            values = self._list(kind) if token == '[' else [self._value(token, kind)]
            if kind is not None:
                decoded.setdefault(name, []).extend(values)
            if self._peek() in (';', ','):
                self._take()
        return decoded

    def _field_name(self, token: str) -> str:
        if token in '{}<>:;,]':
            raise TextFormatError(f'a field name was expected, found {token!r}')
        if token != '[':  # `[type.googleapis.com/...]`: an Any's or extension's name.
            return token
        parts = []
        while (part := self._take()) not in (']', None):
            parts.append(part)
        return f'[{"".join(parts)}]'

    def _list(self, kind: str | None) -> list[Any]:
        values = []
        while (token := self._take()) != ']':
            if token != ',':
                values.append(self._value(token, kind))
        return values

    def _value(self, token: str | None, kind: str | None) -> Any:
        if token is None:
            raise TextFormatError('the text ends where a value was expected')
        if token in _CLOSING:
            return self.message(kind if kind in self._schema else None, _CLOSING[token])
        if token[0] in '"\'':
            while (self._peek() or ' ')[0] in '"\'':  # "a" "b" is one string.
                token = token[:-1] + self._take()[1:]
            # Only the strings kept are unescaped: others may be any bytes (tensor contents).
            return codecs.escape_decode(token[1:-1])[0].decode('utf-8') if kind else token
        if kind == 'int':
            return int(token, 0) if token.lower().startswith(('0x', '-0x')) else int(token)
        if kind == 'bool':
            return token in ('true', 'True', 't', '1')
        if kind == 'enum' and token.lstrip('-').isdigit():
            return int(token)
        return token


def decode(text: str, message: str, schema: Schema) -> Message:
    """The fields of `message` (the whole text) that `schema` lists.

    Raises:
        TextFormatError: if the text is not such a message.
        ValueError: if a number is not one.
    """
    return _TextReader(text, schema).message(message, None)
