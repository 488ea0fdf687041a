"""Shipped model artifact folders (models/default is the one loaded by default)."""
