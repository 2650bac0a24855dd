"""Built-in scorers for ``xpkit evaluate --scorer NAME``: text matching (exact, normalized,
f1, regex, contains), numbers (numeric), math answers (math), an external verifier command
(verifier) and an LLM judge (judge)."""
