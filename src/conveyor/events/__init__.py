"""CloudEvents, the outbox, subscriptions and deliveries."""
