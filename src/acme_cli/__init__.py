"""The `acme` command line: dev stack orchestration and operator tooling."""
