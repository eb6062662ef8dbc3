"""Search: which pipelines to try (plan), the trial record (store), and selection (select)."""
