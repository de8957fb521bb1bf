"""A Python client for the Conveyor API, and the streaming bundle writer it uploads with."""
