"""Substrate shared by two or more methods (never method-specific)."""
