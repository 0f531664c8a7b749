"""Data layer: sources (one module per API), the Parquet lake, validation and ingestion."""
