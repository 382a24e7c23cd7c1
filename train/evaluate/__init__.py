"""Evaluation: clip accuracy and voting, multilabel metrics, sound event detection (sed_eval, sed_scores_eval)."""
