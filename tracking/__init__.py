"""The MLflow layer: stores, run identity, buffered logging, queries to pandas, the paper importer.

store.py (URI, checks, experiments) · runs.py (run identity, the run index) · recorder.py (the Recorder)
with batches.py (buffered writer) and bulk.py (bulk insert of finished runs) · query.py (runs -> pandas)
· paper_release.py (reads the release's .npz files) · import_npz.py (writes them as runs; the CLI)
· conventions.py (the paper's measurement conventions).

Bottom floor of the project: imports neither `interventions` nor `analyses`, and never torch.
"""
