"""Batch prediction and embedding over archives, written as Parquet, in this process or on Ray.

Where things live:

- :mod:`.engine`: which engine runs a job (``Engine``, :func:`~.engine.parse_engine`) and whether
  its optional extras are installed; importable without Ray or pyarrow.
- :mod:`.inputs`: folders, globs, list files and URLs expanded into entries, and the
  :class:`~.inputs.Reader` that turns one entry into a decoded image.
- :mod:`.work`: the work on one batch (classify or embed), shared by every engine.
- :mod:`.parquet`: schemas, result tables, the atomic part writer, resume, embeddings files.
- :mod:`.ray`: the Ray session, the actors and the actor pool that streams result tables.
- :mod:`.jobs`: ``predict_to_parquet`` and ``embed_to_parquet``, which tie the above together.
- :mod:`.embeddings`: an embeddings file loaded into this machine's embedding cache.

Nothing here exits the process: the CLI (``cli/model.py``, ``cli/batch.py``) turns errors into messages.
"""
