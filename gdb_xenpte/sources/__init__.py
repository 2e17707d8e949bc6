"""Memory sources: where page tables are read from (live gdb targets, dumps, raw images)."""
