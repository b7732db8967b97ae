"""The bundled models, registered as a user's model would be: mlp.py (the paper's MLP), transformer.py
(with and without LayerNorm) and deep_mlp.py (Prieto et al.'s MLP on one-hot pairs, any depth)."""
