"""Serving: the sealed-model repository on disk, version policies, and the manager that verifies,
loads, smoke-tests and atomically swaps model versions."""

from gateway.serving.manager import ModelManager
from gateway.serving.policy import VersionPolicy
from gateway.serving.repository import Repository
from gateway.serving.status import ModelState, ModelStatus, ServedModel

__all__ = ["ModelManager", "ModelState", "ModelStatus", "Repository", "ServedModel", "VersionPolicy"]
