"""Interim: the losses' hyperparameter registry (replaced by the torch-free registry)."""

from kdlm.losses import HPARAMS, validate_hparams

__all__ = ["HPARAMS", "validate_hparams"]
