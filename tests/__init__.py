"""lambdarapid's tests: fast unit tests with fakes, and end-to-end tests with real runtimes."""
