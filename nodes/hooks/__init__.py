"""Webhooks: the registry by key, the delivery as signed and retried jobs, and
the policy on which addresses a hook may reach."""
