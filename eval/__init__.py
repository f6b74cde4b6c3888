"""Evaluating trained dictionaries."""
