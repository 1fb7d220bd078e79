"""The audit log: who did which privileged action, when, on what and why (append-only)."""
