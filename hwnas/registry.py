"""One registry pattern: a name -> factory table (as timm registers its models).

Spaces, backends, predictors, search algorithms and export formats are each chosen by
name on the command line and in the Python API. Each kind has one :class:`Registry`; a
factory is added with :meth:`Registry.register` where it is defined, so adding one (a
backend, say) touches one file, and ``choices()`` feeds ``click.Choice`` so ``--help``
lists what exists. An entry may be lazy (``"module:attribute"``) so that asking for one
runtime never imports the others.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Generic, Iterator, TypeVar

from hwnas.errors import HwnasError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named factories of one kind. Unknown names raise ``error(message)`` listing the
    known ones.

    ``package``: a package whose modules register themselves on import; they are imported
    on the first lookup (so a new module there is found without being listed anywhere)."""

    def __init__(self, kind: str, error: Callable[[str], Exception] = HwnasError,
                 package: str | None = None) -> None:
        self.kind, self.error, self.package = kind, error, package
        self._entries: dict[str, T | str] = {}
        self._discovered = package is None

    def register(self, name: str, factory: T | str | None = None) -> Any:
        """Add ``factory`` under ``name``; without a factory, a decorator that adds what it
        decorates (and returns it unchanged). A string is ``"module:attribute"``, imported
        when first asked for."""
        if factory is not None:
            self._add(name, factory)
            return factory

        def decorate(obj: T) -> T:
            self._add(name, obj)
            return obj

        return decorate

    def _add(self, name: str, factory: T | str) -> None:
        if name in self._entries and self._entries[name] is not factory:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = factory

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def get(self, name: str) -> T:
        """The factory registered as ``name``."""
        self._discover()
        try:
            entry = self._entries[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.kind} {name!r}; known: "
                             f"{', '.join(self.choices())}") from None
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered as ``name``."""
        factory: Callable[..., Any] = self.get(name)  # type: ignore[assignment]
        return factory(*args, **kwargs)

    def choices(self) -> list[str]:
        """Every registered name, in registration order (what ``--help`` lists)."""
        self._discover()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.choices())

    def __len__(self) -> int:
        return len(self.choices())


__all__ = ["Registry"]
