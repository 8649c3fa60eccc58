"""srl-ext."""
