"""Policies: loading, evaluation, reload, fixtures and scenarios, offline checks."""
