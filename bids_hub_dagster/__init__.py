"""bids_hub_dagster: BIDS neuroimaging datasets → typed Hugging Face datasets, through Dagster."""

__version__ = "0.1.0"
