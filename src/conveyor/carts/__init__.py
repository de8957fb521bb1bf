"""Carts: bundles of archived files, tar or zip, streamed or built once."""
