"""Built-in ``select-data`` selectors: methods and scores, registered like outside plugins."""
