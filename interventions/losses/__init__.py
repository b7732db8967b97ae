"""The bundled losses, registered as a user's loss would be: ce.py (cross-entropy), mse.py, stablemax.py
(Prieto et al.'s StableMax) and softmax_precision.py (cross-entropy with its softmax in float16/32/64)."""
