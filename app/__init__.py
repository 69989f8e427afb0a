"""Postwarden: a mail server pipeline."""
