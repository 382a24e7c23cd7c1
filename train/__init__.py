"""Training and evaluation of streamtag's Piczak CNN on UrbanSound8K and ESC-10/50.

Run as ``python -m train --help``. Modules, in the order data flows through them:
:mod:`train.datasets` (layout readers), :mod:`train.cache` (features computed
once per dataset and FeatureSpec), :mod:`train.sources` (what the training loop
draws batches from, with :mod:`train.augment`), :mod:`train.loop` (plain
PyTorch training), :mod:`train.evaluate` (clip decisions by voting),
:mod:`train.crossval` (the official fold protocols) and :mod:`train.report`
(tables and plots). The ``streamtag`` package never imports this one.
"""
