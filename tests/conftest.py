"""Session-wide test settings: tests are offline."""

import os

# LiteLLM fetches its model price table over the network when first imported unless told to
# use the bundled copy; tests never reach the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
