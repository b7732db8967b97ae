"""The bundled optimizer, registered as a user's optimizer would be: adamw.py."""
