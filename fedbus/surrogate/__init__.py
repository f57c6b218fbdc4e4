"""The surrogate optimizer and its generated task. Pure and seeded; not an LLM."""
