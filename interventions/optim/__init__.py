"""The bundled optimizers, registered as a user's optimizer would be: adamw.py, sgd.py and orthograd.py
(⊥Grad, a wrapper in front of either)."""
