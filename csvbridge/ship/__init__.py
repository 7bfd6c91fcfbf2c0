"""Stage 3, ship: the bulk API client (pacer, retries, progress) and the CSV feed."""
