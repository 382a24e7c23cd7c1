"""Data and mixing: dataset readers, the feature cache, windows, augmentation, two-clip overlays and soundscapes."""
