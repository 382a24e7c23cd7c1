"""The command-line stages beyond ``cv``/``features``/``compare``: overlays and multilabel training, scenes and detection."""
