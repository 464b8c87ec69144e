"""The embedded local LM engine (in-process transformers, batched, constrained).

``LocalLM`` is a ``dspy.BaseLM`` that serves a Hugging Face causal LM (by default the embedded
SmolLM2-135M-Instruct) in this process: requests from many threads are batched by one worker,
and DSPy's ChatAdapter / JSON output formats are enforced by constrained decoding.
"""

from csc.engine.local_lm import ChatCompletion, LocalLM
from csc.engine.model_store import ModelNotFoundError, cache_dir

__all__ = ["ChatCompletion", "LocalLM", "ModelNotFoundError", "cache_dir"]
