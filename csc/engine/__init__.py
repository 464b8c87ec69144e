"""The embedded local LM engine (in-process transformers, continuous batching, constrained).

``LocalLM`` is a ``dspy.LM`` whose engine (``LocalEngine``, DSPy's ``complete(Request) ->
Response`` contract) serves a Hugging Face causal LM (by default the embedded
SmolLM2-135M-Instruct) in this process: requests from many threads join one continuous batch,
prompt prefixes are kept in a KV cache across requests, and DSPy's ChatAdapter / JSON output
formats are enforced by constrained decoding.
"""

from csc.engine.local_lm import AsyncLocalEngine, LocalEngine, LocalLM
from csc.engine.model_store import ModelNotFoundError, cache_dir

__all__ = ["AsyncLocalEngine", "LocalEngine", "LocalLM", "ModelNotFoundError", "cache_dir"]
