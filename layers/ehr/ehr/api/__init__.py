"""Transport-independent HTTP surface: the route table, request/response shapes, the pipeline."""
