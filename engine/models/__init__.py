"""The model repository shared by every predictor type: layouts, versions, live reloading and LRU caches."""
from engine.models.layout import FileEntry, ModelFormat, VersionInfo
from engine.models.repository import ModelRepository
from engine.models.stores import Store

__all__ = ["FileEntry", "ModelFormat", "ModelRepository", "Store", "VersionInfo"]
