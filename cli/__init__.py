"""xpkit's command line: thin modules that parse options and call ``xpkit.core``."""
