"""The decision about an incoming message: which mailbox, which reply, which reason (SPEC R1.5, R3)."""
