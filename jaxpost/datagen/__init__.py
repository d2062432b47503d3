"""Data construction: generate -> judge -> filter -> write a dataset a run trains on.

``core``: the shared pieces (a model that writes, judges, the versioned writer).
``selective``: S3FT and SSR target selection.
"""
