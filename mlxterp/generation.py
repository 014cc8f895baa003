"""Text generation with a KV cache and the same edits applied at every step."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from .errors import TraceError
from .tracing import HookedRun, InterventionBlock, Interventions, SavedValues

if TYPE_CHECKING:
    from .model import InterpretableModel


class Generation(InterventionBlock):
    """Generates when its `with` block exits, or on first use of `.text` / `.tokens`.

    Edits declared in the block apply to the prompt's forward and to every new token's
    forward. Values saved in the block are concatenated over the steps along the token axis.
    """

    def __init__(
        self,
        model: "InterpretableModel",
        prompt: str,
        max_tokens: int,
        temperature: float,
        seed: int | None,
        chat: bool,
        stop_at_eos: bool,
    ):
        if not isinstance(prompt, str) or not prompt:
            raise TraceError("generate needs a non-empty prompt string")
        if max_tokens < 1:
            raise TraceError(f"max_tokens must be at least 1, got {max_tokens}")
        if temperature < 0:
            raise TraceError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
        self.model = model
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.chat = chat
        self.stop_at_eos = stop_at_eos
        self.interventions = Interventions()
        self._tokens: list[int] | None = None
        self._prompt_ids: list[int] = []

    def _prompt_tokens(self) -> list[int]:
        tokenizer = self.model.tokenizer
        if self.chat:
            messages = [{"role": "user", "content": self.prompt}]
            return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
        return self.model.encode(self.prompt)

    def run(self) -> None:
        """Generate `max_tokens` tokens (fewer if EOS comes first)."""
        if self._tokens is not None:
            return
        self._prompt_ids = self._prompt_tokens()
        self.model.check_context(len(self._prompt_ids) + self.max_tokens, "generation (prompt + max_tokens)")
        if self.interventions.wants_logits:
            raise TraceError("generation has no single logits tensor to save; save a layer instead")
        if self.interventions.grads:
            raise TraceError("gradients are taken in `with model.trace(...)`, not in generation: trace the prompt instead")
        key = mx.random.key(self.seed if self.seed is not None else 0)
        eos = set(getattr(self.model.tokenizer, "eos_token_ids", None) or [])
        cache = make_prompt_cache(self.model.model)
        # The last generated token is never fed back, so positions run to prompt + max_tokens - 1.
        runner = HookedRun(self.interventions, stop_path=None,
                           horizon=len(self._prompt_ids) + self.max_tokens - 1)
        new: list[int] = []
        step_input = mx.array([self._prompt_ids], dtype=mx.int32)
        with runner.installed(self.model.model):
            for _ in range(self.max_tokens):
                logits = self.model.model(step_input, cache=cache)[:, -1, :].astype(mx.float32)
                runner.offset += step_input.shape[1]
                if self.temperature == 0:
                    token = mx.argmax(logits, axis=-1)
                else:
                    key, sub = mx.random.split(key)
                    token = mx.random.categorical(logits / self.temperature, key=sub)
                token_id = int(token.item())
                new.append(token_id)
                if self.stop_at_eos and token_id in eos:
                    break
                step_input = mx.array([[token_id]], dtype=mx.int32)
        self._tokens = new
        mx.eval([s.value for s in self.interventions.saves.values() if s._chunks])

    @property
    def tokens(self) -> list[int]:
        """The generated token ids (the prompt excluded)."""
        self.run()
        return list(self._tokens)

    @property
    def text(self) -> str:
        """The generated text (the prompt excluded)."""
        return self.model.decode(self.tokens)

    @property
    def activations(self) -> SavedValues:
        """Saved module outputs over prompt and generated tokens: (1, seq, d_model) each."""
        self.run()
        values = SavedValues(self.model.model, "output", self.model.anatomy.layers_path, "generate")
        values.update({p: s.value for (p, k), s in self.interventions.saves.items() if k == "output"})
        return values

    def __str__(self) -> str:
        return self.text
