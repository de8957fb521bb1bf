"""Conveyor: moves research data."""

__version__ = "0.1.0"
