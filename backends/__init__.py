"""Model server integrations: one package per backend, each defining ``BACKEND``.

Packages whose names start with ``_`` (such as ``_fakekit``) are shared helpers, not backends.
"""
