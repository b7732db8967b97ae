"""The bundled losses, registered as a user's loss would be: ce.py (cross-entropy), mse.py."""
