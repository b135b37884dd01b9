"""The durable message store (see base.py for the contract)."""

from __future__ import annotations

from pathlib import Path

from engine.config import StoreConfig
from engine.store.base import Store


def open_store(config: StoreConfig, root: Path) -> Store:
    """The configured backend (not yet opened)."""
    from engine.store.cipher import PayloadCipher
    from engine.store.sqlite import SqliteStore

    cipher = None
    if config.encryption is not None:
        keys = {k: resolve(root, f) for k, f in config.encryption.keys.items()}
        cipher = PayloadCipher.from_files(keys, config.encryption.active)
    path = Path(config.path)
    return SqliteStore(
        path if path.is_absolute() else root / path,
        config.synchronous,
        config.max_batch,
        config.max_size_mb * 1024 * 1024,
        cipher,
    )


def resolve(root: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path
