"""Real peers for tests, benchmarks and scripts: a Hub server that speaks huggingface_hub's
HTTP protocol, and a ``dagster-webserver`` + ``dagster-daemon`` pair. Not used at run time."""
