"""Publishing to a Hugging Face Hub dataset repo."""
