"""The provider directory (eHealth ID -> name, profession, secure-mail address, certificate)."""

from engine.directory.directory import Directory, Provider, Settings, directory_from

__all__ = ["Directory", "Provider", "Settings", "directory_from"]
