"""Consumers: ``consumer.zip`` programs run on matching events, in virtualenvs of their own."""
