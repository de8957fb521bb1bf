"""Standing in for the BioMAJ download service: its queue messages, Redis keys and web API."""
