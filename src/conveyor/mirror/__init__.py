"""Mirrors: remote data banks kept in the archive, release by release (BioMAJ's job)."""
