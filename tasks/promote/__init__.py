"""Registry promotion: gates over evaluation metrics move the `champion` alias, with rollback and a lock."""
