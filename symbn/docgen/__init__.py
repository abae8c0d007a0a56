"""Derivation documents from what the derivation records: one writer per format."""
