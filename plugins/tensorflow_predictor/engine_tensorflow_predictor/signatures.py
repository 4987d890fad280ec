"""Which signature of a SavedModel serves a model: Cortex's rules, and the signature_key of each configured model."""
from __future__ import annotations

from dataclasses import dataclass

from engine import Models

# The key Cortex fell back to when a model has several signatures and none is configured (Estimator exports).
FALLBACK_KEY = "predict"


class SignatureError(Exception):
    """No signature of a model can be chosen; the message lists the keys it has."""


def select_signature(keys: list[str], configured: str | None) -> str:
    """The configured key if given (it must exist); else the only key; else "predict"; else a SignatureError."""
    shown = ", ".join(f"'{key}'" for key in sorted(keys))
    if not keys:
        raise SignatureError("the SavedModel has no signatures; export it with "
                             "tf.saved_model.save(module, path, signatures={...})")
    if configured is not None:
        if configured in keys:
            return configured
        raise SignatureError(f"signature_key '{configured}' is not a signature of the model; its keys are: {shown}")
    if len(keys) == 1:
        return keys[0]
    if FALLBACK_KEY in keys:
        return FALLBACK_KEY
    raise SignatureError(f"signature_key was not configured and the model has several signatures, none of them "
                         f"'{FALLBACK_KEY}'; set predictor.signature_key (or models.signature_key, or "
                         f"models.paths[].signature_key) to one of: {shown}")


@dataclass(frozen=True)
class SignatureKeys:
    """The signature_key configured for each model: its own (models.paths[].signature_key) or the shared one."""

    shared: str | None
    per_model: dict[str, str]

    @classmethod
    def from_models(cls, models: Models | None) -> SignatureKeys:
        """Read the keys of a normalised `predictor.models` (predictor.signature_key is already folded in)."""
        if models is None:
            return cls(None, {})
        own = {entry.name: entry.signature_key for entry in models.paths or () if entry.signature_key is not None}
        return cls(models.signature_key, own)

    def for_model(self, name: str) -> str | None:
        """The key configured for model `name` (None: choose by Cortex's rules)."""
        return self.per_model.get(name, self.shared)

    @property
    def uniform(self) -> bool:
        """True when every model gets the same configured key, so it can be checked as soon as a version loads."""
        return all(key == self.shared for key in self.per_model.values())

