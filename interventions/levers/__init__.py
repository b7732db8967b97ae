"""The bundled levers, registered as a user's lever would be: clamp.py (the paper's norm clamp, with its
allocation variant) and tau.py (the output temperature). The registry imports them on first use."""
