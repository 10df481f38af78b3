"""Figures and tables from evaluations and training runs."""
