"""The gdb glue: commands, parameters and their help, nothing else.

Importing this package registers nothing (and imports no gdb); :func:`register` creates every
parameter and command. The engine modules never import this package.
"""

__all__ = ["register"]

_registered = []


def register() -> list:
    """Create every ``xen-pte`` parameter and command in the running gdb; return them.

    Calling it again (e.g. sourcing the loader twice) returns the existing objects.
    """
    if not _registered:
        from . import commands, domains, p2m, params
        _registered.extend(params.register())
        _registered.extend(commands.register())
        _registered.extend(domains.register())
        _registered.extend(p2m.register())
    return list(_registered)
