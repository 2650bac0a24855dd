"""Built-in plugins. Each registers through the same pluggy hooks an outside plugin uses."""
