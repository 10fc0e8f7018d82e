"""Retrieval collections shipped inside the package (BEIR layout, gzip-compressed), loaded by name.

``sma.data.resolve_dataset("cranfield")`` finds ``sma/datasets/cranfield/`` when neither a path nor a
folder under ``$SMA_DATA_DIR`` of that name exists. See ``cranfield/README.md`` for provenance.
"""
