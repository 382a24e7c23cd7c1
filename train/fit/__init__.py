"""Fitting: the training loop, single-label cross-validation, multilabel training on overlays, strong labels on scenes."""
