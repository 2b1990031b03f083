"""Deferred execution of chosen modules, to cut the agent's start under TCG.

In a cold-booted guest under TCG every module body costs ~20x its native time: ``import asyncio``
alone takes about a second, and most of that is modules asyncio (or protobuf) imports but the agent
never uses, or uses only later: ``inspect`` and what it drags in (``dis``, ``ast``, ``tokenize``),
protobuf's pure-Python message backend (``python_message`` + ``text_format``, unused with the upb
backend), ``subprocess``, ``calendar``/``datetime``...

:func:`install` puts a finder first on ``sys.meta_path`` that, for the listed names only, hands
out a placeholder module whose body runs on first real use (an attribute other than the ones
the import system reads itself). Unlike ``importlib.util.LazyLoader``, a second ``import X`` of a
placeholder does not run the body: Python 3.11's import system reads ``X.__spec__`` on every
import, which LazyLoader counts as a use.

A module whose body is needed at import time anyway (a ``from X import name`` or a module-level
``X.attr``) simply loads at that point: the list can only move work later, never break imports.
"""

from __future__ import annotations

import sys
import threading
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType

# Attributes the import machinery reads on already-imported modules: served without loading.
_IMPORT_ATTRS = frozenset({"__spec__", "__name__", "__loader__", "__package__", "__path__", "__file__",
                           "__class__", "__dict__", "__cached__"})
_lock = threading.RLock()


class _Deferred(ModuleType):
    """A module whose body has not run yet; the first real attribute access runs it."""

    def __getattribute__(self, attr: str):  # type: ignore[no-untyped-def]
        if attr in _IMPORT_ATTRS:
            return object.__getattribute__(self, attr)
        _load(self)
        return getattr(self, attr)

    def __setattr__(self, attr: str, value) -> None:  # type: ignore[no-untyped-def]
        if attr in _IMPORT_ATTRS:
            object.__setattr__(self, attr, value)
            return
        _load(self)
        setattr(self, attr, value)

    def __delattr__(self, attr: str) -> None:
        _load(self)
        delattr(self, attr)


def _load(module: ModuleType) -> None:
    with _lock:
        if type(module) is not _Deferred:
            return  # another thread (or a re-entrant access) got here first
        object.__setattr__(module, "__class__", ModuleType)  # accesses from the body are real now
        spec: ModuleSpec = module.__spec__
        loader = spec.loader_state  # the real loader, kept aside by the finder
        spec.loader = loader
        module.__loader__ = loader
        try:
            loader.exec_module(module)  # type: ignore[union-attr]
        except BaseException:
            sys.modules.pop(spec.name, None)
            raise


class _DeferringLoader:
    def __init__(self, spec: ModuleSpec) -> None:
        self.spec = spec

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return spec.loader_state.create_module(spec)  # type: ignore[union-attr, no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        object.__setattr__(module, "__class__", _Deferred)


class _Finder:
    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, name: str, path=None, target=None) -> ModuleSpec | None:  # type: ignore[no-untyped-def]
        if name not in self.names:
            return None
        spec = PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader_state = spec.loader
        spec.loader = _DeferringLoader(spec)  # type: ignore[assignment]
        return spec


def install(names: frozenset[str] | set[str]) -> None:
    """Defer the bodies of ``names`` (top-level or dotted module names) until first use."""
    sys.meta_path.insert(0, _Finder(frozenset(names)))


def loaded(name: str) -> bool:
    """Whether module ``name`` is imported and its body has run."""
    module = sys.modules.get(name)
    return module is not None and type(module) is not _Deferred
