"""MLflow tracking: the store (store.py), the run hierarchy and buffered logging (recorder.py),
queries back to pandas (query.py), and the importer of the paper's published metrics (import_npz.py).

Bottom floor of the project: imports neither `interventions` nor `analyses`, and never torch.
"""
