"""Regenerate a Search-R3 model: SFT with a composite loss, then GRPO-style RL in a retrieval environment."""
