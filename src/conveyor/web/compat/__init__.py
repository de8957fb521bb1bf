"""Mounts that speak the published Pacifica services' HTTP contracts."""
