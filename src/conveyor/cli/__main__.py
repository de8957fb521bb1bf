"""``python -m conveyor.cli``."""

from conveyor.cli.main import app

# Guarded: a spawned worker process (the mirror's transfer workers) imports this module
# again, and must not start the command line.
if __name__ == "__main__":
    app()
