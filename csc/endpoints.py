"""Several OpenAI-compatible endpoints behind one LM, balanced by LiteLLM's Router.

A role's LM may name a list of servers (e.g. one vLLM per GPU machine)::

    [lm]
    model = "openai/Qwen2.5-7B-Instruct"
    api_base = ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]

or, on ``csc synthesize``, ``--api-base`` repeated. :func:`routed_lm` builds a ``dspy.LM`` whose
engine sends each call through a ``litellm.Router`` over those endpoints: calls are spread
across them, and a call that fails (connection error, 5xx, 429) is retried on another endpoint,
while the failing one cools down for a while. Keys come from the environment as for one endpoint.
"""

from __future__ import annotations

from typing import Any

ROUTER_GROUP = "csc-endpoints"


def _engine_class() -> type:
    from dspy.clients.engines.litellm_engine import LiteLLMEngine
    from dspy.clients.engines.litellm_errors import litellm_errors

    class RouterEngine(LiteLLMEngine):
        """DSPy's LiteLLM engine with ``litellm.completion`` replaced by ``Router.completion``."""

        def __init__(self, router: Any) -> None:
            super().__init__(model_type="chat")
            self.router = router

        def complete(self, request: Any) -> Any:
            data = self._arguments(request)
            data["model"] = ROUTER_GROUP
            # The router owns retries (on another endpoint) and the connection settings.
            for key in ("num_retries", "api_base", "api_key"):
                data.pop(key, None)
            with litellm_errors(model=request.model):
                raw = self.router.completion(**data)
            return self._response(raw, request)

        # DSPy sends ChatAdapter calls to a ``complete_legacy`` when an engine has one (the
        # parent's would call LiteLLM itself, past the router). The shortcut is deprecated for
        # custom engines (DSPy 3.5 removes it), so every call takes the canonical complete().
        complete_legacy = None

        def stream(self, request: Any) -> Any:  # pragma: no cover - synthesis does not stream
            raise NotImplementedError("streaming through several endpoints is not supported")

        def __repr__(self) -> str:
            return f"RouterEngine({len(self.router.model_list)} endpoints)"

    return RouterEngine


def routed_lm(model: str, api_bases: list[str], lm_kwargs: dict[str, Any]) -> Any:
    """A ``dspy.LM`` for ``model`` whose calls are balanced over ``api_bases`` (see module).

    ``lm_kwargs`` are the usual ``dspy.LM`` arguments; ``api_key`` goes to the endpoints,
    ``num_retries`` to the router.
    """
    import dspy
    from litellm import Router

    if len(set(api_bases)) != len(api_bases):
        raise ValueError(f"api_base lists the same endpoint twice: {api_bases}")
    kwargs = dict(lm_kwargs)
    kwargs.pop("api_base", None)
    api_key = kwargs.pop("api_key", None)
    params = {"model": model, **({"api_key": api_key} if api_key else {})}
    router = Router(
        model_list=[
            {"model_name": ROUTER_GROUP, "litellm_params": {**params, "api_base": base}}
            for base in api_bases
        ],
        routing_strategy="simple-shuffle",
        num_retries=max(int(kwargs.pop("num_retries", 3)), len(api_bases)),
        retry_after=0,
        allowed_fails=1,  # one failure puts an endpoint in cool-down; retries go elsewhere
        cooldown_time=5.0,
    )
    lm = dspy.LM(model, engine=_engine_class()(router), num_retries=0, **kwargs)
    lm.endpoints = list(api_bases)  # for reports; no keys
    return lm
