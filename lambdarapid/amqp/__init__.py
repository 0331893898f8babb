"""AMQP-RPC transport: connection service, the daemon's consumer, the server's invoker."""
