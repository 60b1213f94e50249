"""Compatibility layers for code written against other libraries.

:mod:`kiwi_anyio.compat.kiwipy` stands in for kiwiPy 0.9 (``kiwipy`` and ``kiwipy.rmq``) so
that kiwiPy's clients (plumpy, aiida-core) switch with one line, run before they import
``kiwipy``::

    import kiwi_anyio.compat.kiwipy; kiwi_anyio.compat.kiwipy.install()

See ``docs/coming-from-kiwipy.md``.
"""
