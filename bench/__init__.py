"""fusedrnn benchmark suite (installed as fusedrnn.bench; run: python -m fusedrnn.bench)."""
