"""automerge: find the best way to merge fine-tuned LLM specialists that share one base model."""

__version__ = "0.1.0"
