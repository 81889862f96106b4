"""Dataset adapters (Anthropic-HH, UltraFeedback, JSON lines), tokenisation, probing sets."""
