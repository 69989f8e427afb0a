"""The IMAP server (SPEC §8): protocol, sessions and the store reads they need."""
