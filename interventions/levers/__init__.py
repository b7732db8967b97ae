"""The bundled levers, registered as a user's lever would be: clamp.py (the paper's norm clamp, with its
allocation variant), tau.py (the output temperature), logit_norm.py (do(L): the logit scale held),
grokfast.py (Grokfast's EMA and MA gradient filters) and init_scale.py (Omnigrok's init scale). The
registry imports them on first use."""
