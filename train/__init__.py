"""Training and evaluation of streamtag's Piczak CNN on UrbanSound8K and ESC-10/50.

Run as ``python -m train --help``. The layout follows the stages data flows through:

* :mod:`train.data`: dataset readers (``datasets``), the feature cache (``cache``),
  windows (``segments``), batch sources and augmentation (``sources``, ``augment``),
  two-clip overlays (``overlay``) and soundscapes with strong labels (``scenes``);
* :mod:`train.fit`: plain PyTorch training (``loop``), the official fold protocols
  (``crossval``), multilabel training on overlays (``multilabel``) and strong-label
  training on scenes (``strong``);
* :mod:`train.evaluate`: clip decisions by voting (``clips``), multilabel metrics
  (``multilabel``), sound event detection with sed_eval and sed_scores_eval (``detection``);
* :mod:`train.reports`: tables and plots of runs, studies and detection results;
* :mod:`train.commands`: the command lines of the later stages (``__main__`` holds cv,
  features and compare).

The ``streamtag`` package never imports this one.
"""
