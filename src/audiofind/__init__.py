"""audiofind: find sounds by describing them.

The public API is short: `Library` (open an index folder, `update` it from your sound folders,
`search` it by text or by example) and `load_model` (the embedding model on its own). Both are imported
on first use, so `import audiofind` and `audiofind --help` stay quick. The package is laid out by
concern: the ground floor (`audio`, `assets`, `download`, `paths`) under `models`, `library`,
`research`, `server` and `cli`; see docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Library", "__version__", "load_model"]

if TYPE_CHECKING:
    from .library import Library
    from .models import load_model


def __getattr__(name: str) -> Any:
    """Lazy public names: the heavy imports (numpy, torch, FAISS) happen only when they are used."""
    if name == "Library":
        from .library import Library

        return Library
    if name == "load_model":
        from .models import load_model

        return load_model
    raise AttributeError(f"module 'audiofind' has no attribute {name!r}")
