"""Proposers: drafters that guess the next K tokens of many sequences at once."""
