"""Reports: Markdown tables, CSV, JSON and PNG plots of runs, multilabel studies and detection results."""
