"""The storage conformance suite: one set of tests, written against the storage contracts
(`thymos.storage._contract`), run on every backend."""
