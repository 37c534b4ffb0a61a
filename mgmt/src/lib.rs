//! kiln-mgmt: the management daemon (`kiln server`) and the CLI.
