"""Command-line tools around the gdb extension: ``xen-pte-dump`` and ``xen-pte-diff``.

They drive the real gdb through gdb/MI (pygdbmi) and only ever read the extension's JSON Lines,
never its text tables (house style §14).
"""
