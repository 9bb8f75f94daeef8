"""Raw data → validated data: contracts, the generated ad world, import of real logs, validation."""
