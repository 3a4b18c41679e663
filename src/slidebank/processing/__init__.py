"""Processing next to the data: algorithm jobs submitted against grants, run on Dask, results stored
with their provenance — the use cases over the job records (`jobs`), the algorithms and the catalog."""
