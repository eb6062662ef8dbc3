"""Files shipped with leanify (see PROVENANCE.md)."""
