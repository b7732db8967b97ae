"""The bundled tasks, registered as a user's task would be: modular.py (add, sub, mul, div, x2xyy2 mod p)
and s5.py (composition in S5)."""
