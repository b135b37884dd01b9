"""AMQP 0-9-1 (RabbitMQ): a consuming source (ack after commit) and a confirming destination."""
