"""Data sets as Parquet: MovieLens-100k and a synthetic e-commerce stream."""
