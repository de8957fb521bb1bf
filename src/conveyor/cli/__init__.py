"""The ``conveyor`` command."""
