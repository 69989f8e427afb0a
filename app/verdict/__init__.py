"""The decision about an incoming message: which mailbox, which reply, which reason (SPEC R1.5, R3).

types.py holds what a decision reads and says; dmarc.py is the DMARC decision (R1.5); analysis.py runs
the decisions in order and turns the verdict into mailbox copies, the reply and the headers to add.
"""
