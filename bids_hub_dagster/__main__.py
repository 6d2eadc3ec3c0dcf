"""``python -m bids_hub_dagster`` is the same as the ``bids-hub-dagster`` command."""

from .cli import console

if __name__ == "__main__":
    console()
