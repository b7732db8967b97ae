"""The bundled models, registered as a user's model would be: mlp.py (the paper's MLP) and transformer.py
(with and without LayerNorm)."""
