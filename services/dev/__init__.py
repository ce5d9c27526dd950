"""Dev and test tooling: starts the whole stack (embedded NATS and Redis, every service, the fakes)."""
