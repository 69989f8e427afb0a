"""The outgoing queue and delivery."""
