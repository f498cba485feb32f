"""Model server integrations: one package per backend, each defining ``BACKEND``."""

NAMES = ("hello_world",)
