"""Conversion to and from Hugging Face formats (one declarative mapping per architecture)."""
