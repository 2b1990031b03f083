"""In-memory name reservation and ID-prefix lookup (what crictl users type)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from frakpy.errors import AlreadyExists, InvalidArgument, NotFound

T = TypeVar("T")


class NameIndex:
    """Names reserved by an object id; a second reservation of a name fails."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._names: dict[str, str] = {}

    def reserve(self, name: str, ident: str) -> None:
        owner = self._names.get(name)
        if owner is not None and owner != ident:
            raise AlreadyExists(f"{self.kind} name {name!r} is already reserved by {self.kind} {owner}")
        self._names[name] = ident

    def release(self, name: str) -> None:
        self._names.pop(name, None)

    def owner(self, name: str) -> str | None:
        return self._names.get(name)


class IdIndex(Generic[T]):
    """Objects by full id, found by full id or a unique prefix."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, ident: str, item: T) -> None:
        self._items[ident] = item

    def remove(self, ident: str) -> None:
        self._items.pop(ident, None)

    def values(self) -> Iterable[T]:
        return list(self._items.values())

    def find(self, ident_or_prefix: str) -> T | None:
        if not ident_or_prefix:
            raise InvalidArgument(f"{self.kind} id is empty")
        item = self._items.get(ident_or_prefix)
        if item is not None:
            return item
        matches = [k for k in self._items if k.startswith(ident_or_prefix)]
        if len(matches) > 1:
            raise InvalidArgument(f"{self.kind} id prefix {ident_or_prefix!r} is ambiguous ({len(matches)} match)")
        return self._items[matches[0]] if matches else None

    def get(self, ident_or_prefix: str) -> T:
        item = self.find(ident_or_prefix)
        if item is None:
            raise NotFound(f"{self.kind} {ident_or_prefix!r} not found")
        return item
