"""The embedded local LM engine (in-process transformers, batched, constrained)."""
