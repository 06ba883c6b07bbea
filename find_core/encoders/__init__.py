"""Adapters from Hugging Face foundation models to the features FIND consumes."""
