"""Built-in distillers for ``xpkit distill --method NAME``."""
