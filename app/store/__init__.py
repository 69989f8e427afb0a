"""Local mailboxes: `files` writes messages durably (file + rows, group commit, recovery); `mailboxes`
is the one place that reads and changes `Message` and `Mailbox` rows."""
